"""Names of cells and features: a dataframe's index or column, or a plain dataset of names.

Names are read by slice (cells) or whole (features, categories); what is read whole is capped
in count and bytes before it is read, and every dataset is checked to store what it claims.
"""

from typing import Any

import numpy as np

from scdr.scoring.errors import InputError
from scdr.scoring.reader.base import check_n_vars
from scdr.scoring.reader.guards import Tree
from scdr.scoring.reader.limits import MAX_NAME_BYTES, MAX_NAMES_TOTAL


def frame_names(tree: Tree, path: str, column: str | None, what: str) -> "Names":
    """The index (or the named ``column``) of the obs or var dataframe at ``path``: a group as
    AnnData writes it since 0.7, or a legacy compound table; no names when there is no table."""
    names = Names(tree, what)
    node = tree.lookup(tree.root, path)
    if node is None:
        if column is not None:
            raise InputError(f"the file has no {what} table, so no column '{column}'")
        return names
    if tree.is_array(node):  # legacy compound table
        fields = node.dtype.names or ()
        name = column or "index"
        if name not in fields:
            raise InputError(
                f"{path} has no column '{name}'; columns: {', '.join(fields) or 'none'}"
            )
        names.field = name
        names.dataset = names.checked(node, what == "var")
        return names
    if not tree.is_group(node):
        raise InputError(f"{path} is neither a dataframe group nor a table")
    name = column or tree.attr_str(node, "_index") or "_index"
    target = tree.lookup(node, name)
    if target is None:
        if column is not None:
            cols = [k for k in tree.keys(node) if k != "__categories"]
            raise InputError(f"{path} has no column '{column}'; columns: {', '.join(cols)}")
        return names
    if tree.is_group(target):  # categorical column
        codes, cats = tree.lookup(target, "codes"), tree.lookup(target, "categories")
        if not tree.is_array(codes) or not tree.is_array(cats):
            raise InputError(f"{what} column {target.name} is neither strings nor categorical")
        if codes.dtype.kind not in "iu":
            raise InputError(f"{what} column {target.name} has non-integer category codes")
        names.codes = names.checked(codes, what == "var")
        names.categories = decode(tree.read(names.checked(cats, True), slice(None), cats.name))
    elif not tree.is_array(target):
        raise InputError(f"{what} column {path}/{name} is not a dataset")
    else:
        names.checked(target, what == "var")
    names.dataset = target
    return names


def dataset_names(tree: Tree, ds: Any, what: str, whole: bool) -> "Names":
    """The names stored in the 1-D dataset ``ds`` (``whole``: they will be read at once)."""
    names = Names(tree, what)
    names.dataset = names.checked(ds, whole)
    return names


def decode(values: np.ndarray) -> list[str]:
    """Stored names as strings (bytes decoded as UTF-8, bad bytes replaced)."""
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values.tolist()]


class Names:
    """Names of obs or var (a dataset, a field of a legacy table, or categorical codes), read
    whole or by slice; positions when the file stores none."""

    def __init__(self, tree: Tree, what: str) -> None:
        self.tree, self.what = tree, what
        self.dataset: Any = None
        self.field: str | None = None
        self.codes: Any = None
        self.categories: list[str] = []

    def checked(self, ds: Any, whole: bool) -> Any:
        """``ds`` once it is a 1-D dataset, really stored, of bounded size (``whole``: it is read
        at once, so its length is capped too)."""
        if ds.ndim != 1:
            raise InputError(f"{self.what} names {ds.name} are {ds.ndim}-D; expected 1-D")
        if not self.tree.name_type_ok(ds.dtype if self.field is None or ds.dtype.names is None
                                      else ds.dtype[self.field]):
            raise InputError(f"{self.what} names {ds.name} have type {ds.dtype}; expected strings "
                             "or numbers")
        if ds.dtype.itemsize > MAX_NAME_BYTES:
            raise InputError(f"{self.what} names {ds.name} take {ds.dtype.itemsize:,} bytes each; "
                             f"scdr reads at most {MAX_NAME_BYTES:,}")
        if whole:
            check_n_vars(int(ds.shape[0]), str(ds.name))
            if ds.shape[0] * ds.dtype.itemsize > MAX_NAMES_TOTAL:
                raise InputError(f"{self.what} names {ds.name} take more than "
                                 f"{MAX_NAMES_TOTAL:,} bytes; scdr reads at most that")
        self.tree.check_stored(ds, str(ds.name))
        return ds

    def __len__(self) -> int:
        if self.codes is not None:
            return int(self.codes.shape[0])
        return 0 if self.dataset is None else int(self.dataset.shape[0])

    def read_all(self) -> list[str]:
        """All names."""
        return self.slice(0, len(self))

    def slice(self, start: int, stop: int) -> list[str]:
        """Names ``start:stop``; positions when the file stores none."""
        ds, tree = self.dataset, self.tree
        if ds is None:
            return [str(i) for i in range(start, stop)]
        if self.codes is not None:  # categorical column
            cats = self.categories
            codes = tree.read(self.codes, slice(start, stop), ds.name).astype(np.int64, copy=False)
            return [cats[c] if 0 <= c < len(cats) else "" for c in codes.tolist()]
        if self.field is not None:  # read only the named field of a legacy compound table
            return decode(tree.read_field(ds, self.field, slice(start, stop), ds.name))
        return decode(tree.read(ds, slice(start, stop), ds.name))

