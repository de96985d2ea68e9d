"""Kubernetes plumbing for the Kubernetes backend (autoscaler/backends/kubernetes.py).

* `client` - the configured official client;
* `endpointslices` - the target Service's EndpointSlices, listed then watched on a thread;
* `pods` - endpoints plus the Deployment's status.replicas, as the backend's Pods;
* `scale` - the Deployment's scale subresource, read and written with bounded retries;
* `owners` - another owner (HPA, KEDA ScaledObject) of the Deployment;
* `events` - Kubernetes Events on the Deployment;
* `deletion_cost` - which pods a scale-down removes first;
* `errors` - one-line descriptions of API failures;
* `names` - object-name validation.
"""
