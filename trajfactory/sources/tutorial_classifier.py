"""Tutorial vs not: a keyword prefilter (recall first) and a trained logistic regression (precision), AgentTrek style.

The prefilter counts how-to signals (how-to phrases, "step", numbered lines, sentences that start with
an imperative UI verb). The classifier is a logistic regression over hashed unigram/bigram counts plus
the same structural signals as tokens, trained with plain gradient descent (stdlib only) on the labeled
pages shipped in `data/docs/labels.jsonl` (the bundled apps' help sites) and `data/web_pages/labels.jsonl`
(web-style pages not written for the bundled apps: tutorials for other apps, and API references, blog posts,
news and changelogs as negatives). Its scores are calibrated (Platt scaling on out-of-fold scores), so 0.5
means even odds. A page is a tutorial when it passes the prefilter AND the calibrated probability reaches
the threshold.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field

from trajfactory.sources.docsite import DOCS_ROOT
from trajfactory.sources.tutorial_text import extract_html, extract_markdown, words

__all__ = ["LABELS_PATH", "WEB_LABELS_PATH", "ClassifierConfig", "LabeledPage", "Metrics", "TutorialClassifier", "default_classifier",
           "evaluate", "load_labels", "prefilter", "prefilter_signals", "shipped_labels", "train_classifier"]

LABELS_PATH = DOCS_ROOT / "labels.jsonl"
"""JSON lines `{"path": "shop/checkout.html", "is_tutorial": true, "split": "train" | "test"}`, paths under DOCS_ROOT."""
WEB_LABELS_PATH = DOCS_ROOT.parent / "web_pages" / "labels.jsonl"
"""JSON lines `{"id": ..., "kind": "tutorial" | "api_reference" | "blog" | "news" | "changelog" | "other",
"is_tutorial": ..., "split": ..., "text": the page's extracted main text}`: web-style pages of other apps."""

UI_VERBS = ("click", "tap", "type", "enter", "select", "choose", "pick", "press", "open", "go", "scroll", "fill",
            "sign", "log", "find", "check", "use", "set", "write", "look", "make", "leave", "tick")
_IMPERATIVE = re.compile(r"(?:^|[.!?:;]\s+|^\s*(?:\d+[.)]|[-*•]|step\s*\d+\s*[.:—-]?)\s*)(?:then\s+|and\s+)?(" + "|".join(UI_VERBS) + r")\b",
                         re.I | re.M)
_NUMBERED = re.compile(r"^\s*(?:#+\s*)?(?:\d+[.)]|step\s*\d+)\s", re.I | re.M)
_HOWTO = re.compile(r"\b(how to|how do i|how-to|guide|tutorial|step by step|follow these steps|in \w+ steps)\b", re.I)
_STEP = re.compile(r"\bstep\s*\d*\b", re.I)
_SCREENSHOT = re.compile(r"\[screenshot:", re.I)


def prefilter_signals(text: str) -> dict[str, int]:
    """Counts of the how-to signals in `text` (its own lines, as `extract_html` leaves them)."""
    return {"howto": len(_HOWTO.findall(text)), "step": len(_STEP.findall(text)),
            "numbered": len(_NUMBERED.findall(text)), "imperative": len(_IMPERATIVE.findall(text)),
            "screenshot": len(_SCREENSHOT.findall(text))}


def prefilter(text: str, min_signals: int = 2) -> bool:
    """Keyword prefilter: at least `min_signals` of the signal kinds fire (imperatives must fire twice)."""
    s = prefilter_signals(text)
    fired = (s["howto"] > 0) + (s["step"] > 0) + (s["numbered"] >= 2) + (s["imperative"] >= 2) + (s["screenshot"] > 0)
    return fired >= min_signals


class ClassifierConfig(BaseModel):
    """Hyper-parameters of the logistic-regression tutorial classifier."""

    n_features: int = Field(2**18, ge=16)
    """Hash buckets of the word/bigram features."""
    epochs: int = Field(300, ge=1)
    """Full-batch gradient steps."""
    learning_rate: float = Field(1.0, gt=0)
    l2: float = Field(1e-3, ge=0)
    """L2 penalty: keeps weights small with few labeled pages."""
    threshold: float = Field(0.5, ge=0, le=1)
    """Probability at or above which a page is a tutorial."""
    use_prefilter: bool = True
    """Require the keyword prefilter too (AgentTrek: prefilter for recall, classifier for precision)."""
    calibration_folds: int = Field(3, ge=0)
    """Folds of the out-of-fold scores the Platt calibration is fitted on (0: no calibration)."""


def _tokens(text: str) -> list[str]:
    toks = words(text)
    feats = toks + [f"{a}_{b}" for a, b in zip(toks, toks[1:])]
    s = prefilter_signals(text)
    # structural signals as tokens, so the model can weigh "numbered list" apart from its words
    feats += ["__numbered__"] * min(s["numbered"], 8) + ["__imperative__"] * min(s["imperative"], 8)
    feats += ["__howto__"] * min(s["howto"], 3) + ["__screenshot__"] * min(s["screenshot"], 3)
    return feats


class TutorialClassifier:
    """Logistic regression over hashed, log-scaled, L2-normalised token counts."""

    def __init__(self, config: ClassifierConfig | None = None):
        self.config = config or ClassifierConfig()
        self.weights: dict[int, float] = {}
        self.bias = 0.0
        self.platt = (1.0, 0.0)  # calibrated probability = sigmoid(a * score + b)

    def features(self, text: str) -> dict[int, float]:
        n = self.config.n_features
        counts = Counter(zlib.crc32(t.encode()) % n for t in _tokens(text))  # crc32: stable across processes
        vec = {k: 1.0 + math.log(c) for k, c in counts.items()}
        norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        return {k: v / norm for k, v in vec.items()}

    def fit(self, texts: list[str], labels: list[bool]) -> "TutorialClassifier":
        """Fit the weights on all pages, then the calibration on scores of pages each fold's model did not see."""
        if not texts or len(set(labels)) < 2:
            raise ValueError("fit needs labeled pages of both classes (tutorial and not)")
        xs, ys = [self.features(t) for t in texts], [1.0 if y else 0.0 for y in labels]
        self.weights, self.bias = self._descend(xs, ys)
        k = self.config.calibration_folds
        if k >= 2 and min(sum(ys), len(ys) - sum(ys)) >= k:
            scores: list[float] = [0.0] * len(xs)
            for fold in range(k):  # deterministic folds: every k-th page
                train = [i for i in range(len(xs)) if i % k != fold]
                if len({ys[i] for i in train}) < 2:
                    continue
                w, b = self._descend([xs[i] for i in train], [ys[i] for i in train])
                for i in range(fold, len(xs), k):
                    scores[i] = b + sum(w.get(f, 0.0) * v for f, v in xs[i].items())
            self.platt = _platt(scores, ys)
        return self

    def _descend(self, xs: list[dict[int, float]], ys: list[float]) -> tuple[dict[int, float], float]:
        cfg, w, b, n = self.config, {}, 0.0, len(xs)
        for _ in range(cfg.epochs):
            grad: dict[int, float] = {}
            gb = 0.0
            for x, y in zip(xs, ys):
                err = _sigmoid(b + sum(w.get(k, 0.0) * v for k, v in x.items())) - y
                gb += err
                for k, v in x.items():
                    grad[k] = grad.get(k, 0.0) + err * v
            for k in set(grad) | set(w):
                w[k] = w.get(k, 0.0) - cfg.learning_rate * (grad.get(k, 0.0) / n + cfg.l2 * w.get(k, 0.0))
            b -= cfg.learning_rate * gb / n
        return w, b

    def score(self, text: str) -> float:
        """The uncalibrated logit."""
        return self.bias + sum(self.weights.get(k, 0.0) * v for k, v in self.features(text).items())

    def predict_proba(self, text: str) -> float:
        a, b = self.platt
        return _sigmoid(a * self.score(text) + b)

    def predict(self, text: str) -> tuple[bool, float]:
        """(is_tutorial, probability): the prefilter (when configured) and the threshold both have to agree."""
        p = self.predict_proba(text)
        return (p >= self.config.threshold and (not self.config.use_prefilter or prefilter(text))), p


def _platt(scores: list[float], ys: list[float], steps: int = 2000, lr: float = 0.1) -> tuple[float, float]:
    """Platt scaling: the (a, b) of sigmoid(a * score + b) that fits the labels best, with Platt's smoothed
    targets so a perfectly separated training set does not push the slope to infinity."""
    pos = sum(ys)
    hi, lo = (pos + 1) / (pos + 2), 1 / (len(ys) - pos + 2)
    targets = [hi if y else lo for y in ys]
    a, b, n = 1.0, 0.0, len(ys)
    for _ in range(steps):
        ga = gb = 0.0
        for z, t in zip(scores, targets):
            err = _sigmoid(a * z + b) - t
            ga += err * z
            gb += err
        a, b = a - lr * ga / n, b - lr * gb / n
    return a, b


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True)
class LabeledPage:
    path: str
    text: str
    is_tutorial: bool
    split: str
    kind: str = ""
    """What the page is ("tutorial", "api_reference", "blog", "news", "changelog", ...), where the labels say."""


def load_labels(path: str | Path = LABELS_PATH, docs_root: str | Path | None = None) -> list[LabeledPage]:
    """The labeled pages of one labels file, with their main text: a row names a page file (`path`, relative to
    `docs_root`, default the file's folder; extracted here) or carries the extracted `text` itself (with an `id`)."""
    path = Path(path)
    root = Path(docs_root) if docs_root else path.parent
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):  # JSON keeps U+2028 as it is
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if "text" in row:
                name, text = str(row["id"]), str(row["text"])
            else:
                name, page = row["path"], root / row["path"]
                raw = page.read_text(encoding="utf-8")
                _, text = extract_markdown(raw) if page.suffix in (".md", ".markdown") else extract_html(raw)
            label = bool(row["is_tutorial"])
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"{path}:{n}: expected {{'path': a page under {root} | 'id' and 'text', 'is_tutorial': bool}}: "
                             f"{exc}") from None
        out.append(LabeledPage(name, text, label, row.get("split", "train"), row.get("kind", "")))
    return out


def shipped_labels() -> list[LabeledPage]:
    """Every labeled page the package ships: the bundled help sites' pages and the web-style pages."""
    return load_labels(LABELS_PATH) + load_labels(WEB_LABELS_PATH)


def train_classifier(split: str | None = "train", labels: list[LabeledPage] | None = None,
                     config: ClassifierConfig | None = None) -> TutorialClassifier:
    """Fit on the pages of `split` (None: every labeled page) of `labels` (default: every shipped labeled page)."""
    pages = [p for p in (labels or shipped_labels()) if split is None or p.split == split]
    return TutorialClassifier(config).fit([p.text for p in pages], [p.is_tutorial for p in pages])


@lru_cache(maxsize=1)
def default_classifier() -> TutorialClassifier:
    """The classifier the harvester uses: trained once per process on every shipped labeled page."""
    return train_classifier(split=None)


class Metrics(BaseModel):
    """Precision and recall of one decision rule on one labeled split."""

    rule: str
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int
    errors: list[str] = Field(default_factory=list)
    """Paths the rule got wrong, as `FP:path` / `FN:path`."""


def _metrics(rule: str, pages: list[LabeledPage], preds: list[bool]) -> Metrics:
    tp = sum(p.is_tutorial and y for p, y in zip(pages, preds))
    fp = sum(not p.is_tutorial and y for p, y in zip(pages, preds))
    fn = sum(p.is_tutorial and not y for p, y in zip(pages, preds))
    prec, rec = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return Metrics(rule=rule, precision=prec, recall=rec, f1=2 * prec * rec / max(prec + rec, 1e-9), tp=tp, fp=fp,
                   fn=fn, tn=len(pages) - tp - fp - fn,
                   errors=[f"{'FP' if y else 'FN'}:{p.path}" for p, y in zip(pages, preds) if y != p.is_tutorial])


def evaluate(classifier: TutorialClassifier | None = None, split: str = "test",
             labels: list[LabeledPage] | None = None) -> dict[str, Metrics]:
    """Precision/recall on the held-out `split` of `labels` (default: every shipped labeled page) of: the
    prefilter alone, the classifier alone, both together.

    Without a classifier, one is trained on the `train` split of every shipped labeled page, so the scores are
    on pages it never saw.
    """
    labels = labels or shipped_labels()
    clf = classifier or train_classifier("train")
    held = [p for p in labels if p.split == split]
    if not held:
        raise ValueError(f"no labeled pages in split {split!r}; splits present: {sorted({p.split for p in labels})}")
    pre = [prefilter(p.text) for p in held]
    probs = [clf.predict_proba(p.text) for p in held]
    alone = [pr >= clf.config.threshold for pr in probs]
    return {"prefilter": _metrics("prefilter", held, pre),
            "classifier": _metrics("classifier", held, alone),
            "prefilter+classifier": _metrics("prefilter+classifier", held, [a and b for a, b in zip(pre, alone)])}
