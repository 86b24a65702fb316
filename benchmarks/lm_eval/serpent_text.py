"""Documents and scores of the lm-evaluation-harness task serpent_text (serpent_text.yaml).

The documents are the WikiText articles of a local text file (a top-level heading " = Title = " starts one;
a file without such headings is one document), or only its last `last_articles` of them, the articles that
serpent-train's --validation_articles holds out. Scores are those of lm-eval's own wikitext task: each
document's rolling log-likelihood, per word (whitespace-separated), per byte and in bits per byte.

This file is loaded by lm-eval from its folder (--include_path), so it imports nothing from serpent-hf.
"""

import re

from datasets import Dataset, DatasetDict

ARTICLE_HEADING = re.compile(r"^ = [^=](.*[^=])? = $")  # as serpent_hf.training.data, which this must not import


def articles(text):
    """The text split before each top-level heading (lines before the first one join the first article)."""
    found = []
    for line in text.splitlines(keepends=True):
        if ARTICLE_HEADING.match(line.rstrip("\r\n")) or not found:
            if found and not any(ARTICLE_HEADING.match(l.rstrip("\r\n")) for l in found[-1]):
                found[-1].append(line)  # a preamble before the first heading is not an article of its own
                continue
            found.append([])
        found[-1].append(line)
    return ["".join(lines) for lines in found if "".join(lines).strip()]


def load(text_file=None, last_articles=None, **_):
    """lm-eval's custom_dataset: called with the task's metadata (--metadata '{"text_file": ...}')."""
    if text_file is None:
        raise ValueError('serpent_text needs the text file: --metadata \'{"text_file": "PATH"}\'')
    with open(text_file, encoding="utf-8") as handle:
        documents = articles(handle.read())
    if last_articles is not None:
        if not 0 < int(last_articles) <= len(documents):
            raise ValueError(f"last_articles {last_articles}: {text_file} has {len(documents)} article(s)")
        documents = documents[-int(last_articles):]
    return DatasetDict(test=Dataset.from_dict({"text": documents}))


def process_results(doc, results):
    (loglikelihood,) = results
    words = len(doc["text"].split())
    size = len(doc["text"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, size),
            "bits_per_byte": (loglikelihood, size)}
