"""revalidator data plane: what runs on a target (probes, inference backends, the harness)."""
