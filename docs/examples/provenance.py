import aesampler

registry = aesampler.get_registry()

# What a run used, as plain data for its run directory.
used = registry.provenance([("corruption", "gaussian"), ("transition", "decode_corrupt_encode")])
print(used["corruption"]["gaussian"]["distribution"])

# Later, read back: a component that is missing now is explained.
last_time = {"corruption": {"blur": {"distribution": "aesampler-blur", "version": "0.3.0"}}}
try:
    registry.get("corruption", "blur", provided_before=last_time)
except aesampler.UnknownComponentError as error:
    print(error)
