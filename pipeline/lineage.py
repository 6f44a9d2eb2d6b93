"""`python -m pipeline.lineage`: the documented command; the code is in pipeline.ops.lineage."""
if __name__ == "__main__":
    import runpy

    runpy.run_module("pipeline.ops.lineage", run_name="__main__", alter_sys=True)
