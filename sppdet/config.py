"""One frozen dataclass per stage; each field's comment gives its meaning and the paper's value.

The resolved config of every stage is stored in the work directory's ``config.json`` and hashed
into the stage's folder name (``sppdet.workdir.store``), so changing any field gives a new cache folder.
"""

from __future__ import annotations

from dataclasses import dataclass

# The choices some options take, kept here (no heavy imports) so that ``sppdet COMMAND --help``
# can list them without loading torch; the modules that implement them import these.
BACKBONES = ("zf5", "alexnet", "vgg16")  # sppdet.models.backbones
PROPOSAL_MODES = ("fast", "quality")  # sppdet.models.selective_search
WINDOW_SOURCES = ("proposals", "random")  # pretraining windows, sppdet.training.pretrain
PRECISIONS = ("float32", "bfloat16")  # the trunk's arithmetic, sppdet.models.features
AUTO_PRECISION = "auto"  # resolved by sppdet.models.features.auto_precision before anything is recorded
SVM_LAYERS = ("fc7", "pool5", "pool5+fc7")  # what the SVMs read, sppdet.models.svm
SCENERY_LOOKS = ("glyphs", "signs", "cells")  # sppdet scenery's datasets, sppdet.data.scenery
DEFAULT_SCORE_THRESHOLD = 0.0  # sppdet detect on new images: the SVMs' decision boundary (sppdet.stages.detect)

# Bounds on input images (sppdet.data.images.check_image_size), checked from the file's header
# before any pixel is decoded. 50 MP decodes to 150 MB of BGR and stays a few GB at the peak of
# propose and extract; a larger image is refused (a 30000 x 30000 PNG compresses to 137 KB but
# needs 4.3 GB). Environment variable MAX_PIXELS_ENV overrides the pixel limit for every process.
MAX_IMAGE_PIXELS = 50_000_000
MAX_PIXELS_ENV = "SPPDET_MAX_PIXELS"
# Longer side / shorter side. Every stage scales the SHORTER side to a fixed scale (688 px; up to
# 1200), so the resized area is scale^2 * ratio: at 20:1 and 688 px 9.5 MP, a 3000 x 3000 image's
# worth, and a 20000 x 16 strip (1250:1) would need 6.6 GB. 20:1 admits every photographic
# panorama (about 10:1 at most) and any dataset image (VOC: under 5:1).
MAX_ASPECT_RATIO = 20.0


@dataclass(frozen=True)
class ProposeConfig:
    """Selective search (docs/algorithm.md section 1)."""

    mode: str = "fast"  # "fast" (paper; HSV+Lab, OpenCV's k in {150,300,450}) or "quality"
    max_proposals: int = 2000  # boxes kept per image (paper: ~2,000)
    min_size: int = 16  # px; smaller boxes are dropped (original: min box width 20)
    max_side: int = 500  # px; larger images are downscaled for the search, boxes scaled back


@dataclass(frozen=True)
class ExtractConfig:
    """One-pass conv features (docs/algorithm.md sections 2-3)."""

    backbone: str = "zf5"  # "zf5" (paper), "alexnet" or "vgg16" (torchvision features[:-1])
    width: float = 1.0  # zf5 channel multiplier (1.0 = the paper's 96-256-384-384-256)
    weights: str = "none"  # hash of the weights file used ("none" = random init from seed)
    scales: tuple[int, ...] = (688,)  # shorter side; paper: 688, or (480, 576, 688, 864, 1200)
    seed: int = 0  # random-init seed (matters only with weights "none"; paper: ImageNet weights)
    target: int = 224  # px; each window is pooled at the scale where it is closest to target^2 (paper: 224)
    precision: str = "float32"  # the trunk's arithmetic: "float32" or "bfloat16" (stored float16 either way)
    lrn: bool = True  # zf5's LRN layers (False: a trunk pretrained with batch norm, which trains without them)


@dataclass(frozen=True)
class SvmConfig:
    """Per-class linear SVMs with hard-negative mining (docs/algorithm.md section 8; R-CNN rcnn_train.m)."""

    layer: str = "fc7"  # features the SVMs read: "fc7" (paper, after fine-tuning) or "pool5"
    C: float = 1e-3  # hinge-loss weight in 0.5|w|^2 + C * sum(loss) (paper: 1e-3)
    positive_weight: float = 2.0  # extra loss weight of positives (paper: 2, liblinear -w1 2)
    bias_feature: float = 10.0  # constant appended to each vector, its weight = bias/10 (paper: 10)
    target_norm: float = 20.0  # features are scaled to this mean L2 norm (paper: 20)
    negative_overlap: float = 0.3  # negatives: proposals with IoU < this to every box of the class (0.3)
    hard_threshold: float = -1.0001  # after the first image only negatives scoring above this are added
    evict_threshold: float = -1.2  # after each retrain, cached negatives scoring below this are dropped
    retrain_every: int = 2000  # retrain a class once it has added more than this many negatives (2,000)
    negative_nms: float = 0.7  # drop a negative overlapping a harder one by IoU > this (paper: 0.7; 1 = off)
    use_difficult: bool = True  # difficult ground-truth boxes are positives (R-CNN: yes)
    extra_positives: int = 0  # per object, proposals with IoU >= extra_positive_iou also positives (R-CNN: 0)
    extra_positive_iou: float = 0.7  # (sppdet.stages.train_svm; only with extra_positives > 0)
    augment_positives: tuple[str, ...] = ()  # object copies: flip, rot90, channels (sppdet.models.object_copies)
    fc7_scale: float = 1.0  # "pool5+fc7": fc7 weighted this times pool5's mean norm (sppdet train tries others on val)
    tol: float = 1e-2  # liblinear stopping tolerance (R-CNN's liblinear 1.94 default: 0.1; docs/decisions.md)
    max_iter: int = 1000  # liblinear iteration cap (liblinear default: 1000)
    seed: int = 0  # liblinear's coordinate order


@dataclass(frozen=True)
class BboxRegConfig:
    """Per-class ridge box regression on pooled conv5 features (docs/algorithm.md section 9)."""

    min_overlap: float = 0.6  # train on windows with IoU > this to their best box (R-CNN 0.6, release 0.5)
    ridge_lambda: float = 1000.0  # ridge penalty on the weights (R-CNN 1000, SPP_net release 4000)
    target_norm: float = 20.0  # features are scaled to this mean L2 norm (paper: 20)
    max_examples_per_class: int = 4000  # reservoir-sampled cap bounding memory (R-CNN: keeps all)
    use_difficult: bool = True  # difficult boxes' own windows are examples (R-CNN: yes); always targets
    seed: int = 0  # reservoir sampling


@dataclass(frozen=True)
class FinetuneConfig:
    """fc6/fc7/fc8 on cached pooled features, conv frozen (docs/algorithm.md section 7); with ``train_conv``,
    trunk and head end to end on whole images (sppdet.training.finetune_conv)."""

    hidden: tuple[int, int] = (512, 512)  # fc6, fc7 (paper: 4096, 4096); = pretrain's, to start from its head
    epochs: int = 12  # passes over the split (release: ~250k iterations); 12 beat 6 on val (docs/decisions.md)
    lr: float = 0.01  # SGD learning rate, 10x lower for the last quarter (release: 0.001 from ImageNet fc)
    momentum: float = 0.9  # (paper: 0.9)
    weight_decay: float = 5e-4  # (paper: 5e-4)
    dropout: float = 0.5  # on fc6 and fc7 (paper: 0.5)
    batch_size: int = 128  # windows per SGD step (release: 128)
    windows_per_image: int = 64  # sampled from one image per pass (Fast R-CNN: 64)
    fg_fraction: float = 0.25  # foreground share of the sampled windows (paper: 25%)
    fg_iou: float = 0.5  # foreground: IoU >= this with a ground-truth box (paper: 0.5)
    bg_iou_low: float = 0.1  # background: best IoU in [bg_iou_low, fg_iou) (paper: [0.1, 0.5))
    seed: int = 0  # image order, window sampling and initialisation
    train_conv: bool = False  # also train the conv trunk through spp_pool (paper: frozen; Fast R-CNN: trained)
    images_per_batch: int = 2  # train_conv: whole images per SGD step, replacing batch_size (Fast R-CNN: 2)
    conv_lr_mult: float = 0.1  # train_conv: the trunk's lr = lr * this (Fast R-CNN: 1; sppdet.training.finetune_conv)


@dataclass(frozen=True)
class DetectConfig:
    """Test-time scoring (docs/algorithm.md section 10)."""

    nms: float = 0.3  # per-class NMS IoU threshold (paper: 0.3)
    top_k: int = 100  # boxes kept per class per image (paper: 100)
    score_threshold: float = -1.0  # SVM scores below this are dropped before NMS (R-CNN keeps all)
    bbox_reg: bool = True  # refine boxes with the trained regressors when present
    tta: tuple[str, ...] = ()  # test-time views whose scores and box deltas are averaged in (sppdet.ops.views)


@dataclass(frozen=True)
class PretrainConfig:
    """Training the conv trunk as an SPP classifier of warped windows when no ImageNet weights
    exist (sppdet.training.pretrain; the paper pre-trains ZF-5 on ImageNet crops with multi-size training,
    section 2.3). Defaults chosen on the synth demo data (sppdet.training.pretrain; evidence in
    docs/decisions.md)."""

    backbone: str = "zf5"  # trunk to train (sppdet.models.backbones); zf5 is the paper's
    width: float = 0.25  # zf5 channel multiplier (paper: 1.0; 0.25 trains in minutes on a CPU)
    sizes: tuple[int, ...] = (64, 96)  # crop sides, one per epoch in turn (paper: 224, 180)
    epochs: int = 16  # passes over the split (paper: ImageNet, ~70 epochs); better than 12 on the demo
    lr: float = 0.0125  # peak SGD learning rate; linear warm-up, then cosine decay to 0
    momentum: float = 0.9  # SGD momentum (paper: 0.9)
    weight_decay: float = 5e-4  # (paper: 5e-4)
    batch_size: int = 16  # crops per SGD step (paper: 128 ImageNet crops; 16: more steps, sppdet.training.pretrain)
    positives_per_object: int = 8  # extra crops per object: proposals with IoU >= fg_iou to it
    backgrounds_per_image: int = 24  # background crops per image: proposals with IoU < bg_iou to all
    fg_iou: float = 0.5  # proposals this close to an object are crops of its class (R-CNN fine-tuning)
    bg_iou: float = 0.3  # background: proposals with IoU < this to every object (R-CNN SVM negatives)
    windows: str = "proposals"  # "proposals" (sppdet propose) or "random" (sppdet.training.random_windows)
    parts_per_object: int = 0  # windows "random": boxes inside each object, background crops of its parts
    context: int = 16  # px of context around each box at a 224 px crop, scaled with the crop (R-CNN: 16)
    hidden: tuple[int, int] = (512, 512)  # fc6, fc7 sizes (paper: 4096, 4096)
    dropout: float = 0.0  # after fc6 and fc7 (paper: 0.5; here it slows a from-scratch trunk's few epochs)
    batch_norm: bool = True  # after every conv while training, folded into the conv when saved
    augment: tuple[str, ...] = ("flip",)  # per crop: "flip" (left-right), "rot90", "channels" (permutation)
    images_per_group: int = 8  # crops of this many images are shuffled together into batches
    seed: int = 0  # init, image order, crop sampling, augmentation and dropout


@dataclass(frozen=True)
class RcnnConfig:
    """R-CNN window features: every window warped to a crop and run through the trunk (sppdet.models.crops),
    the baseline SPP-net is compared with (``--method rcnn``; docs/algorithm.md section 13)."""

    backbone: str = "zf5"  # the same trunk as ExtractConfig's (R-CNN: AlexNet; the paper's comparison: ZF-5)
    width: float = 1.0  # zf5 channel multiplier, as ExtractConfig
    weights: str = "none"  # hash of the weights file used ("none" = random init from seed)
    crop_size: int = 224  # side of the warped crop (R-CNN: 227, AlexNet's input; ZF-5: 224)
    context: int = 16  # px of context around the box in the warped crop (R-CNN: 16)
    levels: tuple[int, ...] = (1, 2, 3, 6)  # pyramid on each crop's conv5 (R-CNN: one 6x6 pool5)
    seed: int = 0  # random-init seed (matters only with weights "none")
    lrn: bool = True  # zf5's LRN layers, as ExtractConfig
