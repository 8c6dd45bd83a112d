"""Many instances: placement on devices, routers, prefill/decode disaggregation."""
