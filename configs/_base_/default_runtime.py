# Importing repvgg_seg registers the RepVGG backbone, CheckedCityscapesDataset and the
# atomic-checkpoint runner, and allow-lists the types of mmengine checkpoints for --resume.
custom_imports = dict(imports=["repvgg_seg"], allow_failed_imports=False)
default_scope = "mmseg"
env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    # tools/train.py and tools/test.py switch to gloo when no GPU is present.
    dist_cfg=dict(backend="nccl"),
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
tta_model = dict(type="SegTTAModel")
# mmengine's Runner, except that checkpoints are written to a temporary file and renamed.
runner_type = "AtomicCheckpointRunner"
