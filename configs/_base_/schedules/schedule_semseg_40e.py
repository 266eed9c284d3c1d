# The paper's 40-epoch schedule (schedule_paper_40e.py: SGD lr 0.01, momentum 0.9, weight decay
# 1e-4, poly power 0.9 to 0, 7440 iterations at a global batch of 16) with semseg's learning
# rates: the new layers (PPM and classifier = decode_head, auxiliary head) learn at 10 x the
# backbone's rate (semseg tool/train.py: modules_new at base_lr * 10, through the whole poly
# decay). 7440 is also semseg's exact count on 8 GPUs: ceil(2975 / 8) = 372 images per GPU, 186
# batches of 2 (drop_last) per epoch, x 40 epochs.
_base_ = "./schedule_paper_40e.py"
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            "decode_head": dict(lr_mult=10.0),
            "auxiliary_head": dict(lr_mult=10.0),
        }
    )
)
