"""Long Range Arena data (Tay et al., 2021): ListOps, byte-level Text (IMDb) and Retrieval (AAN).

ListOps (Nangia & Bowman, 2018, in LRA's version): a nested expression over the digits 0-9 with
the operators MAX, MIN, MED (median, rounded down) and SM (sum modulo 10); the label is its
value, 0-9. Written as LRA writes it, one example per line of a `Source<TAB>Target` TSV:

    ( ( ( [MAX 2 ) ( ( [SM 4 ) 5 ) ] ) ] )  ->  9          tokens: [MAX 2 [SM 4 5 ] ]

The parentheses only record how LRA's generator nested its tuples; the tokens (what the
model reads, and what "length" counts) are the operators, the digits and the closing "]".
The generator follows LRA's `listops.py`: from depth 1, an element is an operator over 2-10
elements with probability 1/4 and otherwise a digit (always a digit at depth 10); trees are
drawn until enough distinct ones have a length within the range.

Text: IMDb reviews as UTF-8 bytes, classified positive/negative. Retrieval: two AAN papers as
bytes, label 1 when one cites the other; the official TSV rows are
`label<TAB>id1<TAB>id2<TAB>text1<TAB>text2`.

Token ids: 0 is padding everywhere; ListOps tokens are 1..15 (LISTOPS_VOCABULARY), bytes are
byte + 1 (1..256). A sequence longer than `max_length` is an error naming it unless
`truncation` is on, which is LRA's choice for Text and Retrieval (documents are cut at 4096 and
4000 bytes) but not for ListOps, whose official data never exceeds 2000 tokens.

Every example is a dict with `input_ids` and `labels` (and `input_ids_2` for Retrieval);
`collate` pads a batch on the right and adds the attention masks.
"""

import argparse
import random
import statistics
from pathlib import Path

import torch
from datasets import Dataset, DatasetDict, load_dataset
from tqdm.auto import tqdm

from ..cli import run_command

PAD_ID = 0
LISTOPS_OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
LISTOPS_END = "]"
LISTOPS_VOCABULARY = ("<pad>",) + LISTOPS_OPERATORS + (LISTOPS_END,) + tuple(str(digit) for digit in range(10))
LISTOPS_TOKEN_IDS = {token: index for index, token in enumerate(LISTOPS_VOCABULARY)}
LISTOPS_NUM_LABELS = 10
BYTE_VOCABULARY_SIZE = 257  # padding + 256 byte values
LISTOPS_FILES = {"train": "basic_train.tsv", "validation": "basic_val.tsv", "test": "basic_test.tsv"}
RETRIEVAL_FILES = {"train": "new_aan_pairs.train.tsv", "validation": "new_aan_pairs.eval.tsv",
                   "test": "new_aan_pairs.test.tsv"}

# LRA's generator: probability of an operator (rather than a digit) below the maximum depth. (LRA calls it
# VALUE_P, but a digit is drawn when random() > VALUE_P.)
OPERATOR_PROBABILITY = 0.25


class _TooLong(Exception):
    """Raised while drawing a tree that is already longer than allowed: it would be rejected anyway."""


def _operator_value(operator, values):
    if operator == "[MAX":
        return max(values)
    if operator == "[MIN":
        return min(values)
    if operator == "[MED":
        return int(statistics.median(values))  # LRA: int(np.median), the mean of the middle two rounded down
    return sum(values) % 10


def _draw_tree(rng, depth, max_depth, max_args, budget):
    """A random ListOps tree, its value and its token count; raises _TooLong past `budget` tokens.

    Stopping a tree that has outgrown the range early does not change which trees are accepted
    or how often: the next tree is drawn afresh either way.
    """
    if depth >= max_depth or rng.random() > OPERATOR_PROBABILITY:
        digit = rng.randrange(10)
        return digit, digit, 1
    operator = rng.choice(LISTOPS_OPERATORS)
    arguments, values, length = [], [], 2  # the operator and its "]"
    for _ in range(rng.randint(2, max_args)):
        tree, value, size = _draw_tree(rng, depth + 1, max_depth, max_args, budget - length)
        length += size
        if length > budget:
            raise _TooLong
        arguments.append(tree)
        values.append(value)
    return (operator, tuple(arguments)), _operator_value(operator, values), length


def listops_source(tree):
    """A tree in LRA's `Source` format: `( ( [OP a1 ) a2 ) ... ] )`, one parenthesis pair per tuple."""
    if isinstance(tree, int):
        return str(tree)
    operator, arguments = tree
    text = operator
    for argument in arguments:
        text = f"( {text} {listops_source(argument)} )"
    return f"( {text} {LISTOPS_END} )"


def generate_listops(num_examples, seed=0, min_length=500, max_length=2000, max_depth=10, max_args=10):
    """`num_examples` distinct (Source, Target) pairs with min_length <= tokens <= max_length."""
    if not 1 <= min_length <= max_length:
        raise ValueError(f"ListOps lengths need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    rng = random.Random(seed)
    examples = {}
    # Long expressions are rare draws (LRA's 100,000 take minutes), so show how far it got.
    with tqdm(total=num_examples, desc="generating ListOps", unit="example", disable=num_examples < 1000) as progress:
        while len(examples) < num_examples:
            try:
                tree, value, length = _draw_tree(rng, 1, max_depth, max_args, max_length)
            except _TooLong:
                continue
            if length >= min_length:
                before = len(examples)
                examples.setdefault(listops_source(tree), value)  # distinct trees: no test tree is seen in training
                progress.update(len(examples) - before)
    return list(examples.items())


def write_listops_tsv(path, examples):
    """Write (Source, Target) pairs as LRA's TSV (with its header)."""
    lines = ["Source\tTarget"] + [f"{source}\t{target}" for source, target in examples]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _check_length(ids, max_length, truncation, where):
    if len(ids) <= max_length:
        return ids
    if truncation:
        return ids[:max_length]
    raise ValueError(
        f"{where}: the sequence has {len(ids)} tokens, longer than max_length={max_length} "
        "(raise max_length, or pass truncation=True to cut it)"
    )


def encode_listops(source, where="ListOps source"):
    """LRA Source string -> token ids (parentheses dropped)."""
    tokens = source.replace("(", " ").replace(")", " ").split()
    if not tokens:
        raise ValueError(f"{where}: the expression is empty")
    unknown = sorted({token for token in tokens if token not in LISTOPS_TOKEN_IDS})
    if unknown:
        raise ValueError(f"{where}: unknown ListOps token(s) {unknown}; expected {list(LISTOPS_VOCABULARY[1:])}")
    return [LISTOPS_TOKEN_IDS[token] for token in tokens]


def encode_bytes(text):
    """UTF-8 bytes, shifted by one so that 0 stays padding."""
    return [byte + 1 for byte in text.encode("utf-8")]


def _parse_label(text, num_labels, where):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}: the label {text!r} is not a number") from None
    if not value.is_integer() or not 0 <= value < num_labels:
        raise ValueError(f"{where}: the label {text!r} is not an integer in [0, {num_labels})")
    return int(value)


def _tsv_rows(path, columns):
    """(line number, fields) for every non-empty line, skipping a header that names `columns`."""
    with open(path, encoding="utf-8", newline="") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")  # no quoting: LRA's files are plain tab-separated text
            if number == 1 and [field.strip().lower() for field in fields] == [c.lower() for c in columns]:
                continue
            if len(fields) != len(columns):
                raise ValueError(
                    f"{path}:{number}: expected {len(columns)} tab-separated columns ({', '.join(columns)}), "
                    f"got {len(fields)}"
                )
            yield number, fields


def encode_listops_examples(examples, max_length=2000, truncation=False, where="generated ListOps"):
    """(Source, Target) pairs -> {"input_ids": [...], "labels": [...]}."""
    input_ids, labels = [], []
    for index, (source, target) in enumerate(examples):
        place = f"{where} example {index}"
        input_ids.append(_check_length(encode_listops(source, place), max_length, truncation, place))
        labels.append(_parse_label(str(target), LISTOPS_NUM_LABELS, place))
    return {"input_ids": input_ids, "labels": labels}


def read_listops_tsv(path, max_length=2000, truncation=False):
    """LRA's ListOps TSV (columns Source, Target) -> {"input_ids": [...], "labels": [...]}."""
    input_ids, labels = [], []
    for number, (source, target) in _tsv_rows(path, ("Source", "Target")):
        where = f"{path}:{number}"
        input_ids.append(_check_length(encode_listops(source, where), max_length, truncation, where))
        labels.append(_parse_label(target, LISTOPS_NUM_LABELS, where))
    return {"input_ids": input_ids, "labels": labels}


def read_retrieval_tsv(path, max_length=4000, truncation=True):
    """LRA's AAN TSV (label, id1, id2, text1, text2) -> {"input_ids", "input_ids_2", "labels"}."""
    first, second, labels = [], [], []
    for number, (label, _, _, text1, text2) in _tsv_rows(path, ("label", "id1", "id2", "text1", "text2")):
        where = f"{path}:{number}"
        labels.append(_parse_label(label, 2, where))
        first.append(_check_length(encode_bytes(text1), max_length, truncation, where + " text1"))
        second.append(_check_length(encode_bytes(text2), max_length, truncation, where + " text2"))
    return {"input_ids": first, "input_ids_2": second, "labels": labels}


LRA_RELEASE = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
LISTOPS_HOW = ("generate it with `python -m serpent_hf.training.lra_data DIR`, leave out --data_path to generate it "
               f"on the fly, or download LRA's release ({LRA_RELEASE}; listops-1000/)")
RETRIEVAL_HOW = f"download LRA's release ({LRA_RELEASE}) and give its lra_release/tsv_data folder"


def check_data_folder(data_path, names, task, how):
    """A missing folder or file of LRA's layout is named, with how to make it."""
    missing = [name for name in names if not (Path(data_path) / name).is_file()]
    if missing:
        where = "does not exist" if not Path(data_path).is_dir() else f"lacks {', '.join(missing)}"
        raise ValueError(f"{task} data folder {data_path} {where}: {how}")


def listops_datasets(data_path=None, max_length=2000, truncation=False, sizes=(96000, 2000, 2000), seed=0,
                     min_length=500, write_dir=None):
    """ListOps train/validation/test: LRA's TSVs from `data_path`, or generated (optionally written)."""
    if data_path is not None:
        check_data_folder(data_path, LISTOPS_FILES.values(), "ListOps", LISTOPS_HOW)
        return DatasetDict({split: Dataset.from_dict(read_listops_tsv(Path(data_path) / name, max_length, truncation))
                            for split, name in LISTOPS_FILES.items()})
    examples = generate_listops(sum(sizes), seed=seed, min_length=min_length, max_length=max_length)
    # Shuffle before splitting so that the splits share one length distribution (generation order is arbitrary).
    random.Random(seed + 1).shuffle(examples)
    splits, start = {}, 0
    for split, size in zip(LISTOPS_FILES, sizes):
        splits[split] = examples[start:start + size]
        start += size
    if write_dir is not None:
        Path(write_dir).mkdir(parents=True, exist_ok=True)
        for split, name in LISTOPS_FILES.items():
            write_listops_tsv(Path(write_dir) / name, splits[split])
    return DatasetDict({split: Dataset.from_dict(encode_listops_examples(rows, max_length, truncation, split))
                        for split, rows in splits.items()})


def retrieval_datasets(data_path, max_length=4000, truncation=True):
    """AAN train/validation/test from LRA's `new_aan_pairs.{train,eval,test}.tsv` in `data_path`."""
    if data_path is None:
        raise ValueError("Retrieval needs data_path: the directory with LRA's new_aan_pairs.{train,eval,test}.tsv "
                         f"({RETRIEVAL_HOW})")
    check_data_folder(data_path, RETRIEVAL_FILES.values(), "Retrieval", RETRIEVAL_HOW)
    return DatasetDict({split: Dataset.from_dict(read_retrieval_tsv(Path(data_path) / name, max_length, truncation))
                        for split, name in RETRIEVAL_FILES.items()})


def text_datasets(dataset_name="imdb", train_file=None, test_file=None, max_length=4096, truncation=True):
    """Byte-level IMDb: a Hub dataset by name, or local csv/json/parquet files with `text` and `label` columns.

    IMDb has no validation split; LRA evaluates on its test split, which serves as both here.
    """
    if (train_file is None) != (test_file is None):
        raise ValueError("give both train_file and test_file for local Text data, or neither to load dataset_name")
    if train_file is not None:
        extension = Path(train_file).suffix.lstrip(".")
        builder = {"csv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}.get(extension)
        if builder is None:
            raise ValueError(f"train_file {train_file!r}: expected a .csv, .json, .jsonl or .parquet file")
        raw = load_dataset(builder, data_files={"train": train_file, "test": test_file})
    else:
        raw = load_dataset(dataset_name)
    for split in ("train", "test"):
        missing = {"text", "label"} - set(raw[split].column_names)
        if missing:
            raise ValueError(f"Text data split {split!r} lacks column(s) {sorted(missing)}; it has {raw[split].column_names}")

    def encode(example, index, split):
        where = f"{split} example {index}"
        ids = _check_length(encode_bytes(example["text"]), max_length, truncation, where)
        return {"input_ids": ids, "labels": _parse_label(str(example["label"]), 2, where)}

    splits = {}
    for split in ("train", "test"):
        splits[split] = raw[split].map(encode, with_indices=True, fn_kwargs={"split": split},
                                       remove_columns=raw[split].column_names)
    # IMDb has no validation split: validation is the test split, so a recipe must not pick a checkpoint by it
    # (configs/train-lra-text.json reports the last epoch's model, not the best on the test set).
    return DatasetDict(train=splits["train"], validation=splits["test"], test=splits["test"])


def collate(features):
    """Pad `input_ids` (and `input_ids_2`) on the right to the longest in the batch; masks mark real tokens."""
    batch = {}
    for suffix in ("", "_2"):
        key = "input_ids" + suffix
        if key not in features[0]:
            continue
        sequences = [feature[key] for feature in features]
        longest = max(len(sequence) for sequence in sequences)
        ids = torch.full((len(sequences), longest), PAD_ID, dtype=torch.long)
        mask = torch.zeros(len(sequences), longest, dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
            mask[row, : len(sequence)] = 1
        batch[key], batch["attention_mask" + suffix] = ids, mask
    batch["labels"] = torch.tensor([feature["labels"] for feature in features])
    return batch


def main(argv=None):
    """Write a generated ListOps in LRA's layout: basic_train.tsv, basic_val.tsv, basic_test.tsv."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("output_dir")
    parser.add_argument("--sizes", type=int, nargs=3, default=(96000, 2000, 2000), metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--min_length", type=int, default=500)
    parser.add_argument("--max_length", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    listops_datasets(None, args.max_length, False, tuple(args.sizes), args.seed, args.min_length, args.output_dir)
    print(f"wrote {sum(args.sizes)} ListOps examples to {args.output_dir}")


if __name__ == "__main__":
    run_command(main)  # one-line errors, as the console commands
