"""`python -m pipeline.sample_data`: the documented command; the code is in pipeline.samples.sample_data."""
if __name__ == "__main__":
    import runpy

    runpy.run_module("pipeline.samples.sample_data", run_name="__main__", alter_sys=True)
