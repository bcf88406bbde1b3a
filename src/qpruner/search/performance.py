"""The performance model of AutoMixQ and RankAdaptor: plan features → predicted error.

A bagged ensemble of small scikit-learn regressors, refit on every evaluated plan of the
study whenever a searcher proposes. The ensemble's mean is the prediction and its spread
the uncertainty (AutoMixQ's optimistic pick uses it). Inputs and targets are standardised,
so perplexities near 260 and accuracies near 0.5 fit alike. With few points an MLP or
boosted trees overfit wildly, so below ``MIN_POINTS_NONLINEAR`` every kind falls back to
ridge regression on the features and their squares (documented, deterministic).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from qpruner.errors import QPrunerError

KINDS = ("mlp", "gbt", "ridge")
MIN_POINTS_NONLINEAR = 6


@dataclass
class PerformanceModelConfig:
    kind: str = "mlp"  # mlp: bagged MLPRegressor; gbt: bagged GradientBoostingRegressor; ridge
    n_models: int = 5
    hidden: tuple[int, ...] = (32, 32)
    seed: int = 0


def rank_correlation(a, b) -> float:
    """Spearman's rho; 0.0 where it is undefined (a constant input)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    rho = spearmanr(a, b).statistic
    return 0.0 if not np.isfinite(rho) else float(rho)


class PerformanceModel:
    def __init__(self, config: PerformanceModelConfig | None = None):
        self.config = config or PerformanceModelConfig()
        if self.config.kind not in KINDS:
            raise QPrunerError(
                f"unknown performance model {self.config.kind!r}; choose from {', '.join(KINDS)}"
            )
        self.members: list = []
        self.kind_used = self.config.kind
        self.n_train = 0
        self.train_rho = 0.0

    @property
    def fitted(self) -> bool:
        return bool(self.members)

    def _estimator(self, kind: str, seed: int):
        from sklearn.compose import TransformedTargetRegressor
        from sklearn.ensemble import GradientBoostingRegressor
        from sklearn.linear_model import Ridge
        from sklearn.neural_network import MLPRegressor
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer, StandardScaler

        if kind == "mlp":
            reg = MLPRegressor(
                hidden_layer_sizes=self.config.hidden,
                solver="lbfgs",
                alpha=1e-3,
                max_iter=2000,
                random_state=seed,
            )
        elif kind == "gbt":
            reg = GradientBoostingRegressor(
                n_estimators=100, max_depth=2, learning_rate=0.1, subsample=0.8, random_state=seed
            )
        else:
            squares = FunctionTransformer(lambda x: np.hstack([x, x**2]))
            return TransformedTargetRegressor(
                make_pipeline(squares, StandardScaler(), Ridge(alpha=1.0 + seed % 3)),
                transformer=StandardScaler(),
            )
        return TransformedTargetRegressor(make_pipeline(StandardScaler(), reg), transformer=StandardScaler())

    def fit(self, X: np.ndarray, y: np.ndarray) -> PerformanceModel:
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float).reshape(-1)
        if X.ndim != 2 or X.shape[0] != y.shape[0]:
            raise QPrunerError(f"performance model: {X.shape} features for {y.shape} targets")
        if X.shape[0] < 2:
            raise QPrunerError("performance model needs at least 2 evaluated plans to fit")
        from sklearn.exceptions import ConvergenceWarning

        n = X.shape[0]
        kind = self.config.kind if n >= MIN_POINTS_NONLINEAR else "ridge"
        rng = np.random.default_rng(self.config.seed)
        self.members = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for m in range(self.config.n_models):
                idx = (
                    rng.integers(0, n, n) if n >= 8 else np.arange(n)
                )  # bootstrap once there is data to spare
                if np.ptp(y[idx]) == 0:
                    idx = np.arange(n)
                self.members.append(self._estimator(kind, self.config.seed * 1000 + m).fit(X[idx], y[idx]))
        self.kind_used, self.n_train = kind, n
        self.train_rho = rank_correlation(self.predict(X), y)
        return self

    def predict_with_spread(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.fitted:
            raise QPrunerError("performance model used before fit")
        preds = np.stack([m.predict(np.asarray(X, dtype=float)) for m in self.members])
        return preds.mean(axis=0), preds.std(axis=0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_with_spread(X)[0]

    def describe(self) -> dict:
        return {
            "kind": self.config.kind,
            "kind_used": self.kind_used,
            "n_models": self.config.n_models,
            "n_train": self.n_train,
            "train_spearman": self.train_rho,
        }
