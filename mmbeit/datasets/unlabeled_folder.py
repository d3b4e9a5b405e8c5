"""A folder of images without labels, for BEiT / BEiT v2 pretraining.

Pretraining needs images only. :class:`UnlabeledImageFolder` lists them either by
walking a folder or from a text file, and yields ``dict(img_path=...)`` per image for
the pretraining pipeline (:class:`~mmbeit.datasets.transforms.LoadImageRGB`,
:class:`~mmbeit.datasets.transforms.BEiTMaskedViews`,
:class:`~mmbeit.datasets.transforms.PackMIMInputs`). The same pipeline also runs on
mmpretrain's ``ImageNet`` (its labels are then ignored).
"""
import os
import os.path as osp
from typing import Callable, List, Optional, Sequence, Union

from mmengine.dataset import BaseDataset

from mmbeit.registry import DATASETS, TRANSFORMS

__all__ = ['UnlabeledImageFolder', 'IMG_EXTENSIONS', 'list_images']

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp')


def list_images(folder: str, extensions: Sequence[str] = IMG_EXTENSIONS) -> List[str]:
    """Paths (relative to ``folder``, '/'-separated) of the images under ``folder``.

    The search is recursive and follows symbolic links; extensions match in any case;
    files and folders whose name starts with '.' are skipped. The result is sorted by
    the relative path string.
    """
    exts = tuple(e.lower() for e in extensions)
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith('.')]
        rel_root = osp.relpath(root, folder)
        for name in files:
            if name.startswith('.') or not name.lower().endswith(exts):
                continue
            rel = name if rel_root == '.' else osp.join(rel_root, name)
            found.append(rel.replace(os.sep, '/'))
    return sorted(found)


def _is_label(token: str) -> bool:
    return token.lstrip('-').isdigit()


@DATASETS.register_module()
class UnlabeledImageFolder(BaseDataset):
    """Every image in a folder (recursively), or the images an ``ann_file`` lists.

    Each item of ``data_list`` is ``dict(img_path=PATH)``.

    * Without ``ann_file``: the images under the image folder (``data_root`` joined
      with ``data_prefix``), found recursively with :func:`list_images` (extensions
      .jpg .jpeg .png .webp .bmp in any case, hidden files and folders skipped), sorted
      by relative path.
    * With ``ann_file`` (relative to ``data_root`` unless absolute, mmengine's rule): one
      path per line relative to the image folder, in file order; blank lines are
      skipped and a trailing integer label (``'n01/x.JPEG 3'``, mmpretrain's format) is
      ignored. The listed files are taken as they are (no extension filter, no existence
      check: an unreadable file fails when it is loaded, naming it).

    Args:
        data_root (str): the dataset folder.
        ann_file (str): optional list file, see above. Default '' (walk the folder).
        pipeline (Sequence[dict | callable]): transforms; dicts are built with
            ``mmbeit.registry.TRANSFORMS`` (unprefixed names resolve in mmbeit, then
            mmengine; others need their scope, e.g. ``'mmpretrain.RandomFlip'``).
        max_images (int, optional): keep only the first N images (after sorting).
        data_prefix (str | dict): image folder relative to ``data_root``, e.g. 'train'
            for the ImageNet layout (``dict(img_path='train')`` also works).
        **kwargs: the other arguments of :class:`mmengine.dataset.BaseDataset`
            (``indices``, ``serialize_data``, ``lazy_init``, ``test_mode``, ...).

    Raises:
        FileNotFoundError: when the image folder or the ``ann_file`` does not exist, or
            when the folder holds no image.
        ValueError: when the ``ann_file`` lists no image or ``max_images`` < 1.
    """

    METAINFO = dict()

    def __init__(self,
                 data_root: str = '',
                 ann_file: str = '',
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 max_images: Optional[int] = None,
                 data_prefix: Union[str, dict] = '',
                 **kwargs):
        if max_images is not None and (not isinstance(max_images, int)
                                       or isinstance(max_images, bool) or max_images < 1):
            raise ValueError(f'UnlabeledImageFolder: max_images must be a positive int or '
                             f'None, got {max_images!r}')
        self.max_images = max_images
        if isinstance(data_prefix, str):
            data_prefix = dict(img_path=data_prefix)
        transforms = [TRANSFORMS.build(t) if isinstance(t, dict) else t for t in pipeline]
        super().__init__(ann_file=ann_file or '', data_root=data_root or '',
                         data_prefix=data_prefix, pipeline=transforms, **kwargs)

    @property
    def img_folder(self) -> str:
        prefix = self.data_prefix.get('img_path', '')
        return osp.normpath(prefix) if prefix else self.data_root

    def _folder_error(self, what: str) -> FileNotFoundError:
        return FileNotFoundError(
            f'UnlabeledImageFolder: {what}; set data_root in the config, or on the command '
            f'line (pretraining configs, where SeededDataset wraps it) with --cfg-options '
            f'train_dataloader.dataset.dataset.data_root=/path/to/images')

    def load_data_list(self) -> List[dict]:
        folder = self.img_folder
        if not folder:
            raise self._folder_error('data_root is not set')
        if self.data_root and not osp.isdir(self.data_root):
            raise self._folder_error(f'data_root {self.data_root!r} is not a folder')
        if not osp.isdir(folder):
            raise self._folder_error(f'the image folder {folder!r} (data_root + data_prefix) '
                                     f'is not a folder')
        if self.ann_file:
            rel_paths = self._read_ann_file()
        else:
            rel_paths = list_images(folder)
            if not rel_paths:
                raise FileNotFoundError(
                    f'UnlabeledImageFolder: no images found under {folder!r} (searched '
                    f'recursively for {", ".join(IMG_EXTENSIONS)} in any case; hidden files '
                    f'and folders are skipped)')
        if self.max_images is not None:
            rel_paths = rel_paths[:self.max_images]
        return [dict(img_path=osp.join(folder, rel)) for rel in rel_paths]

    def _read_ann_file(self) -> List[str]:
        if not osp.isfile(self.ann_file):
            raise FileNotFoundError(f'UnlabeledImageFolder: ann_file {self.ann_file!r} does '
                                    f'not exist (a relative ann_file is read from data_root)')
        rel_paths = []
        with open(self.ann_file, encoding='utf-8') as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                parts = line.rsplit(maxsplit=1)
                rel_paths.append(parts[0] if len(parts) == 2 and _is_label(parts[1])
                                 else line)
        if not rel_paths:
            raise ValueError(f'UnlabeledImageFolder: ann_file {self.ann_file!r} lists no '
                             f'image')
        return rel_paths
