"""TFDS preference / SFT datasets stored as array_record, read with `tfds.data_source` + grain.

No TensorFlow is needed: tensorflow-datasets builds and reads array_record files on its own, and
grain maps the records. `data.path` accepts `tfds:NAME[/SPLIT]@DATA_DIR` (split defaults to
`train`), e.g. `--config.data.path=tfds:arith_prefs@/data/tfds`.

    write_tfds(records, name="arith_prefs", data_dir="/data/tfds")   # from JSON-able dicts
    rows = list(read_tfds("arith_prefs", data_dir="/data/tfds"))      # ((where, line), dict)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from alignax.data.errors import DataError

TEXT_FIELDS = ("prompt", "chosen", "rejected", "completion")


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError("TFDS datasets need tensorflow-datasets, array-record and grain: "
                        "pip install 'alignax[tfds]'") from None
    return tfds


def write_tfds(records: Sequence[dict], *, name: str, data_dir: str,
               split: str = "train", version: str = "1.0.0") -> str:
    """Builds an array_record TFDS dataset from flat records; returns its directory.

    Text fields (`prompt`, `chosen`, `rejected`, `completion`) become `Text` features, `label`
    a bool, `objective` an int; every record must have the same fields.
    """
    tfds = _tfds()
    if not records:
        raise DataError("no records to write", path=f"tfds:{name}")
    fields = sorted(records[0])
    spec = {}
    for f in fields:
        if f in TEXT_FIELDS:
            spec[f] = tfds.features.Text()
        elif f == "label":
            spec[f] = tfds.features.Scalar(dtype="bool")
        elif f == "objective":
            spec[f] = tfds.features.Scalar(dtype="int64")
        else:
            raise DataError(f"unsupported field {f!r} for a TFDS preference dataset",
                            path=f"tfds:{name}", field=f)

    class _Builder(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version(version)

        def _info(self):
            return tfds.core.DatasetInfo(builder=self,
                                         features=tfds.features.FeaturesDict(spec))

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples()}

        def _generate_examples(self):
            for i, rec in enumerate(records):
                if sorted(rec) != fields:
                    raise DataError(f"fields {sorted(rec)} differ from the first record's "
                                    f"{fields}", path=f"tfds:{name}", line=i + 1)
                yield i, rec

    _Builder.name = name
    builder = _Builder(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder.data_dir


def parse_tfds_path(path: str) -> tuple[str, str, str]:
    """`tfds:NAME[/SPLIT]@DATA_DIR` -> (name, split, data_dir)."""
    spec = path[len("tfds:"):]
    if "@" not in spec:
        raise DataError("expected tfds:NAME[/SPLIT]@DATA_DIR", path=path)
    what, data_dir = spec.split("@", 1)
    name, _, split = what.partition("/")
    return name, split or "train", data_dir


def read_tfds(name: str, *, data_dir: str, split: str = "train"
              ) -> Iterator[tuple[tuple[str, int], dict]]:
    """Yields `((where, index), record)` in stored order, bytes decoded to str."""
    tfds = _tfds()
    import grain

    where = f"tfds:{name}/{split}@{data_dir}"
    try:
        source = tfds.data_source(name, data_dir=data_dir)[split]
    except Exception as e:  # tfds raises several types for a missing dataset or split
        raise DataError(f"cannot open TFDS dataset: {e}", path=where) from None
    decode = lambda rec: {k: v.decode("utf-8") if isinstance(v, bytes) else
                          (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
    for i, rec in enumerate(grain.MapDataset.source(source).map(decode)):
        yield (where, i + 1), rec


def records_from(path: str) -> Iterable[tuple[tuple[str, int], dict]]:
    name, split, data_dir = parse_tfds_path(path)
    return read_tfds(name, data_dir=data_dir, split=split)
