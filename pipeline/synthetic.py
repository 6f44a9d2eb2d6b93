"""`python -m pipeline.synthetic`: the documented command; the code is in pipeline.samples.synthetic."""
if __name__ == "__main__":
    import runpy

    runpy.run_module("pipeline.samples.synthetic", run_name="__main__", alter_sys=True)
