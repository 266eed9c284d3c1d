# RepVGG's segmentation schedule (paper Sec. 4.3): SGD momentum 0.9, weight decay 1e-4,
# poly LR from 0.01 with power 0.9, global batch 16 (8 GPUs x 2 images), 40 epochs.
# Run as iterations, like mmseg's schedules: 40 epochs x 2975 images / 16 = 7437.5
# iterations. We validate and save every 4 epochs (ceil(4 x 2975 / 16) = 744 iterations)
# and run 10 such rounds: 7440 iterations = 40.01 epochs.
# With fewer than 8 GPUs keep the global batch at 16 (e.g. 4 GPUs x 4 images via
# --cfg-options train_dataloader.batch_size=4), or the schedule is no longer the paper's.
iters_per_round = 744
max_iters = 10 * iters_per_round
optimizer = dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4)
optim_wrapper = dict(type="OptimWrapper", optimizer=optimizer, clip_grad=None)
# The paper's poly rule decays to zero (mmseg's own schedules stop at eta_min=1e-4).
param_scheduler = [
    dict(type="PolyLR", eta_min=0.0, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=iters_per_round)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    # Every checkpoint is kept; best_mIoU_iter_<n>.pth tracks the best validation mIoU.
    checkpoint=dict(
        type="CheckpointHook",
        by_epoch=False,
        interval=iters_per_round,
        max_keep_ckpts=-1,
        save_best="mIoU",
        rule="greater",
    ),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
