aesampler run recipes/quickstart.yaml inpaint.enabled=true  # train, sample, ... and inpaint
aesampler inpaint runs/quickstart  # a trained run: the right half of 8 test digits
aesampler inpaint runs/quickstart inpaint.mask.missing=centre --overwrite  # another mask
