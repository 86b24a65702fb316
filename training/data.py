"""Text data for language modelling: load, split, tokenise and cut into fixed-length blocks.

    load_raw_text       Hub dataset by name, or local text files -> DatasetDict of lines ("text")
    split_articles      WikiText articles, separated by top-level headings " = Title = "
    load_tokenizer      a tokenizer by Hub name or local directory
    train_bpe_tokenizer a byte-level BPE trained on the training text (`tokenizers`)
    group_into_blocks   tokenise every line, concatenate, cut into blocks of block_size tokens

The blocks carry `labels = input_ids`; the model shifts them (position l predicts token l+1),
as transformers' `run_clm.py` does. Every problem with the data is a ValueError that names it.
"""

import codecs
import re
from itertools import chain
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from tokenizers import ByteLevelBPETokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"
# A top-level WikiText heading: " = Title = " (one "=" each side; " = = Section = = " is not one).
ARTICLE_HEADING = re.compile(r"^ = [^=](.*[^=])? = $")


def is_article_heading(line):
    return ARTICLE_HEADING.match(line.rstrip("\r\n")) is not None


def split_articles(lines):
    """Lines of WikiText -> list of articles, each the list of its lines starting at its heading.

    Lines before the first heading belong to the first article.
    """
    articles = []
    for line in lines:
        if is_article_heading(line) or not articles:
            articles.append([])
        articles[-1].append(line)
    if articles and not any(is_article_heading(line) for line in articles[0]) and len(articles) > 1:
        articles[1] = articles[0] + articles[1]  # a preamble is not an article of its own
        articles = articles[1:]
    return articles


def hold_out_articles(lines, count):
    """Lines -> (train lines, validation lines): the last `count` articles are held out."""
    articles = split_articles(lines)
    if not 0 < count < len(articles):
        raise ValueError(
            f"--validation_articles {count} must be between 1 and the number of articles minus one; the training "
            f"text has {len(articles)} article(s) (top-level ' = Title = ' headings)"
        )
    return list(chain.from_iterable(articles[:-count])), list(chain.from_iterable(articles[-count:]))


def _check_local_file(path, option):
    if not Path(path).is_file():
        raise ValueError(f"{option} {path} does not exist (or is not a file)")
    if Path(path).stat().st_size == 0:
        raise ValueError(f"{option} {path} is empty: there is no text to {'train' if option == '--train_file' else 'evaluate'} on")


def first_invalid_utf8(path, chunk_size=1 << 20):
    """(byte offset, byte value) of the first byte of the file at `path` that is not valid UTF-8, or None."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            pending = len(decoder.getstate()[0])  # an incomplete character carried over from the previous chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:  # error.object is the carried bytes followed by this chunk
                return offset - pending + error.start, error.object[error.start]
            offset += len(chunk)
        pending = len(decoder.getstate()[0])
        if pending:  # the file ends inside a character
            return offset - pending, decoder.getstate()[0][0]
    return None


def _load_text_files(files, cache_dir):
    """datasets' text loader, whose decoding error names neither the file nor the place: we find both."""
    try:
        return load_dataset("text", data_files=files, keep_linebreaks=True, cache_dir=cache_dir)
    except Exception as error:  # datasets wraps the UnicodeDecodeError in a DatasetGenerationError
        for split, path in files.items():
            invalid = first_invalid_utf8(path)
            if invalid is not None:
                option = "--train_file" if split == "train" else "--validation_file"
                raise ValueError(f"{option} {path} is not UTF-8 text: byte {invalid[1]:#04x} at offset {invalid[0]} "
                                 "(convert it, e.g. with iconv -f latin1 -t utf-8)") from error
        raise


def _has_text(dataset):
    """True when some line holds a non-blank character (stops at the first such batch)."""
    return any(any(line.strip() for line in batch["text"]) for batch in dataset.iter(batch_size=1000))


def load_raw_text(data_args, cache_dir=None, need_train=True):
    """DatasetDict with "train" (if need_train or needed for a split) and "validation", one line per row."""
    if data_args.train_file or data_args.validation_file:
        files = {}
        if data_args.train_file:
            _check_local_file(data_args.train_file, "--train_file")
            files["train"] = data_args.train_file
        if data_args.validation_file:
            _check_local_file(data_args.validation_file, "--validation_file")
            files["validation"] = data_args.validation_file
        if need_train and "train" not in files:
            raise ValueError("--validation_file alone is not enough to train: give --train_file too")
        if data_args.validation_file and data_args.validation_articles is not None:
            raise ValueError("--validation_file and --validation_articles both choose the evaluation text: give one "
                             "(on the command line, either one replaces the other from a run file)")
        raw = _load_text_files(files, cache_dir)
        source = data_args.train_file or data_args.validation_file
    else:
        name, config = data_args.dataset_name, data_args.dataset_config_name
        try:
            raw = load_dataset(name, config, cache_dir=cache_dir)
        except Exception as error:  # the Hub client raises many types (offline, 404, gated, bad config)
            raise ValueError(
                f"could not load dataset {name!r} (config {config!r}) from the Hugging Face Hub: {error}. "
                "Check the name, or train offline on local text with --train_file/--validation_file."
            ) from error
        if "train" not in raw:
            raise ValueError(f"dataset {name!r} (config {config!r}) has no 'train' split; it has {list(raw)}")
        source = f"dataset {name!r} ({config})"

    if "train" in raw and "text" not in raw["train"].column_names:
        raise ValueError(f"{source} has no 'text' column; its columns are {raw['train'].column_names}")
    if data_args.validation_articles is not None:
        if "train" not in raw:
            raise ValueError("--validation_articles splits the training text: give --train_file or a dataset")
        train, validation = hold_out_articles(raw["train"]["text"], data_args.validation_articles)
        raw = DatasetDict(train=Dataset.from_dict({"text": train}), validation=Dataset.from_dict({"text": validation}))
    elif "validation" not in raw:
        percent = data_args.validation_split_percentage
        if not 0 < percent < 100:
            raise ValueError(f"--validation_split_percentage must be in (0, 100), got {percent}")
        split = raw["train"].train_test_split(test_size=percent / 100, shuffle=False)
        raw = DatasetDict(train=split["train"], validation=split["test"])
    if need_train and not _has_text(raw["train"]):
        raise ValueError(f"the training text of {source} is empty (only blank lines)")
    if not _has_text(raw["validation"]):
        raise ValueError(f"the evaluation text of {source} is empty (only blank lines)")
    return raw


def load_tokenizer(name, cache_dir=None):
    """A tokenizer by Hub name or local directory; GPT-2-style tokenizers get EOS as padding."""
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1
    if looks_local and not Path(name).expanduser().is_dir():
        raise ValueError(f"--tokenizer_name {name} is not a directory (expected a folder holding tokenizer files)")
    options = {"cache_dir": cache_dir}
    if looks_local:
        name = str(Path(name).expanduser())
        folder = Path(name)
        bare_bpe = (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
        if bare_bpe and not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "config.json")):
            options["tokenizer_type"] = "gpt2"  # vocab.json + merges.txt alone: the GPT-2 byte-level BPE format
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **options)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"could not load tokenizer {name!r}: {error}. Give a Hub name, a local tokenizer folder "
            "(e.g. one with vocab.json + merges.txt), or --train_tokenizer VOCAB_SIZE."
        ) from error
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_bpe_tokenizer(texts, vocab_size):
    """A byte-level BPE of `vocab_size` entries (incl. <|endoftext|> = BOS = EOS = PAD, id 0) trained on `texts`
    (an iterable of strings or of lists of strings)."""
    if vocab_size < 257:
        raise ValueError(f"--train_tokenizer {vocab_size} is too small: a byte-level BPE needs 256 bytes + 1 special token")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[END_OF_TEXT],
                            show_progress=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )


class BlockSizeTooLarge(ValueError):
    """A split of the text holds fewer tokens than one block."""


def resolve_block_size(block_size, tokenizer):
    if block_size is None:
        return min(1024, tokenizer.model_max_length)
    if block_size < 2:
        raise ValueError(f"--block_size must be at least 2 (one input and one target), got {block_size}")
    return block_size


def group_into_blocks(raw, tokenizer, block_size, num_proc=None, overwrite_cache=False):
    """DatasetDict of text lines -> DatasetDict of blocks {"input_ids", "attention_mask", "labels"}, each
    block_size tokens. Every split must yield at least one block."""

    def tokenize(batch):
        return tokenizer(batch["text"])

    def cut(batch):
        # Concatenate this batch of lines and drop the tail that does not fill a block (as run_clm.py).
        joined = {key: list(chain.from_iterable(batch[key])) for key in batch}
        usable = len(joined["input_ids"]) // block_size * block_size
        blocks = {key: [ids[i : i + block_size] for i in range(0, usable, block_size)] for key, ids in joined.items()}
        blocks["labels"] = [list(ids) for ids in blocks["input_ids"]]
        return blocks

    columns = raw[next(iter(raw))].column_names
    tokenized = raw.map(tokenize, batched=True, num_proc=num_proc, remove_columns=columns,
                        load_from_cache_file=not overwrite_cache, desc="Tokenising")
    blocks = tokenized.map(cut, batched=True, num_proc=num_proc, load_from_cache_file=not overwrite_cache,
                           desc=f"Grouping into blocks of {block_size}")
    for split, dataset in blocks.items():
        if len(dataset) == 0:
            tokens = sum(len(ids) for ids in tokenized[split]["input_ids"])
            raise BlockSizeTooLarge(
                f"--block_size {block_size} is larger than the {split} data: it holds {tokens} tokens "
                f"(in groups of up to 1000 lines), so not a single block fits. Use a smaller --block_size or more data."
            )
    return blocks


def sample_text(raw, max_characters=400):
    """The start of the evaluation text (non-blank lines), for plots and examples."""
    lines = []
    for line in raw["validation"][:200]["text"]:
        if line.strip() and not is_article_heading(line):
            lines.append(line.strip())
        if sum(map(len, lines)) >= max_characters:
            break
    return " ".join(lines)[:max_characters]
