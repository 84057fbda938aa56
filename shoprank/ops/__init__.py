"""Operating the server: the embedded tritonserver process and the demo summary."""
