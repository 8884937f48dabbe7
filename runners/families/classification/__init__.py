"""The classification family: tensors in, class scores out; compared per row and summed per slice."""
