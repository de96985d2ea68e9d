"""`qscale calibrate`: measure a live vLLM server and fit the simulator's step-time model.

`facts` reads what the server says about itself, `sweep` runs bounded experiments against it
(streaming, token ids counted per chunk), `simulations/fit.py` fits the profile's terms, and
`calibrate.run_calibration` ties them together.
"""
