"""absl flag definitions; read only by entry points, which turn them into config objects."""
