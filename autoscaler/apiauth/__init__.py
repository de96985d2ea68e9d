"""Authentication and authorization of the HTTP APIs, as an aggregated API server does them.

* `tls` - the serving certificate (configured, or a self-signed one for development) and the
  TLS context that verifies the aggregator's client certificate;
* `requestheader` - the front proxy's identity headers, trusted only from that certificate;
* `reviews` - bearer tokens (TokenReview) and permissions (SubjectAccessReview), cached;
* `attributes` - what a request asks for, as Kubernetes' authorizers see it;
* `middleware` - the aiohttp middleware tying them together (401/403 as Kubernetes Status);
* `setup` - everything built from the autoscaler's config.
"""
