"""Sources of the demo models' ``model.py`` files (Triton Python backend).

These modules run inside Triton's Python backend stub, not in dnnscaler: they import only
numpy/torch and ``triton_python_backend_utils``. ``dnnscaler.triton.demo_models`` copies
them into a model repository.
"""
