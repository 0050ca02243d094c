//! L2-regularised logistic regression on fixed features, solved as scikit-learn's
//! `LogisticRegression(C=c, solver="lbfgs")` defines it: minimise
//! `C · Σᵢ CE(W xᵢ + b, yᵢ) + ½‖W‖²` (the intercept is not penalised) — multinomial for three
//! or more classes, the binary model (one weight vector) for two. Solved in float64 with
//! L-BFGS from zero, to a tight gradient tolerance.

use anyhow::{bail, Result};
use std::collections::VecDeque;
use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct Logistic {
    /// `[K, d]` float64 (for two classes, row 0 is zero: the binary model).
    pub weight: Tensor,
    /// `[K]` float64.
    pub bias: Tensor,
    pub iterations: usize,
}

impl Logistic {
    /// Class probabilities `[n, K]` (float64) of features `[n, d]`.
    pub fn probabilities(&self, x: &Tensor) -> Tensor {
        x.to_kind(Kind::Double)
            .linear(&self.weight, Some(&self.bias))
            .softmax(-1, Kind::Double)
    }

    pub fn predict(&self, x: &Tensor) -> Vec<usize> {
        Vec::<i64>::try_from(self.probabilities(x).argmax(-1, false))
            .expect("argmax")
            .into_iter()
            .map(|i| i as usize)
            .collect()
    }
}

/// The objective's parameters: all K rows for K ≥ 3, only row 1 for K = 2.
struct Problem {
    x: Tensor,
    y: Tensor,
    classes: i64,
    free_rows: i64,
    /// 1 / (C n): the penalty weight once the loss is a mean.
    penalty: f64,
}

impl Problem {
    fn unpack(&self, theta: &Tensor) -> (Tensor, Tensor) {
        let d = self.x.size()[1];
        let rows = theta
            .narrow(0, 0, self.free_rows * d)
            .view([self.free_rows, d]);
        let bias = theta.narrow(0, self.free_rows * d, self.free_rows);
        if self.classes == 2 {
            let zero_w = Tensor::zeros([1, d], (Kind::Double, theta.device()));
            let zero_b = Tensor::zeros([1], (Kind::Double, theta.device()));
            (
                Tensor::cat(&[zero_w, rows], 0),
                Tensor::cat(&[zero_b, bias], 0),
            )
        } else {
            (rows, bias)
        }
    }

    /// The objective divided by C·n, and its gradient.
    fn value_and_grad(&self, theta: &Tensor) -> (f64, Tensor) {
        let theta = theta.detach().set_requires_grad(true);
        let (w, b) = self.unpack(&theta);
        // log_softmax in float64: tch's cross_entropy_for_logits computes in float32.
        let log_p = self.x.linear(&w, Some(&b)).log_softmax(-1, Kind::Double);
        let loss = log_p.nll_loss(&self.y) + w.square().sum(Kind::Double) * (0.5 * self.penalty);
        loss.backward();
        (loss.double_value(&[]), theta.grad().detach())
    }
}

/// Fits features `x` `[n, d]` to classes `y` (in `0..classes`) with inverse regularisation `c`.
pub fn fit(x: &Tensor, y: &[usize], classes: usize, c: f64) -> Result<Logistic> {
    let n = x.size()[0];
    if n == 0 || n as usize != y.len() || classes < 2 || c <= 0.0 {
        bail!("logistic regression needs samples, one label each, at least two classes and C > 0");
    }
    let x = x.to_kind(Kind::Double).detach();
    let d = x.size()[1];
    let free_rows = if classes == 2 { 1 } else { classes as i64 };
    let problem = Problem {
        y: Tensor::from_slice(&y.iter().map(|&v| v as i64).collect::<Vec<_>>()),
        x,
        classes: classes as i64,
        free_rows,
        penalty: 1.0 / (c * n as f64),
    };
    let mut theta = Tensor::zeros([free_rows * (d + 1)], (Kind::Double, tch::Device::Cpu));
    let (mut f, mut g) = problem.value_and_grad(&theta);
    let mut history: VecDeque<(Tensor, Tensor, f64)> = VecDeque::new();
    const MEMORY: usize = 20;
    const MAX_ITER: usize = 10_000;
    let mut iterations = 0;
    while iterations < MAX_ITER {
        // Converged when the gradient of the C-scaled objective, as scikit-learn measures it,
        // is far below its default tolerance.
        if g.abs().max().double_value(&[]) * c * n as f64 <= 1e-10 {
            break;
        }
        iterations += 1;
        let mut direction = lbfgs_direction(&g, &history);
        let mut slope = g.dot(&direction).double_value(&[]);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            history.clear();
            direction = -&g;
            slope = g.dot(&direction).double_value(&[]);
        }
        let (theta_new, f_new, g_new, stalled) =
            line_search(&problem, (&theta, f, &g), &direction, slope);
        let s = &theta_new - &theta;
        let yv = &g_new - &g;
        let sy = s.dot(&yv).double_value(&[]);
        if sy > 1e-300 {
            history.push_back((s, yv, 1.0 / sy));
            if history.len() > MEMORY {
                history.pop_front();
            }
        }
        if stalled {
            break;
        }
        (theta, f, g) = (theta_new, f_new, g_new);
    }
    let (weight, bias) = problem.unpack(&theta);
    Ok(Logistic {
        weight: weight.detach(),
        bias: bias.detach(),
        iterations,
    })
}

/// The L-BFGS direction at gradient `g` by the two-loop recursion over `history` (s, y, 1/sᵀy).
// `x = x - y`, not `x -= y`: on tensors the latter is in place, and `q` aliases the gradient.
#[allow(clippy::assign_op_pattern)]
fn lbfgs_direction(g: &Tensor, history: &VecDeque<(Tensor, Tensor, f64)>) -> Tensor {
    let mut q = g.shallow_clone();
    let mut alphas = Vec::with_capacity(history.len());
    for (s, yv, rho) in history.iter().rev() {
        let a = rho * s.dot(&q).double_value(&[]);
        q = q - yv * a;
        alphas.push(a);
    }
    let gamma = history.back().map_or(
        1.0 / g.norm().double_value(&[]).max(1e-300),
        |(s, yv, _)| s.dot(yv).double_value(&[]) / yv.dot(yv).double_value(&[]),
    );
    let mut r = q * gamma;
    for ((s, yv, rho), a) in history.iter().zip(alphas.iter().rev()) {
        let b = rho * yv.dot(&r).double_value(&[]);
        r = r + s * (a - b);
    }
    -r
}

/// Backtracking line search from `theta` (objective `f`, gradient `g`) along `direction`:
/// Armijo's decrease, or — near the optimum, where the objective's changes fall below float64's
/// resolution — a smaller gradient. The new point, its objective and gradient, and whether the
/// step shrank to nothing (stalled).
fn line_search(
    problem: &Problem,
    (theta, f, g): (&Tensor, f64, &Tensor),
    direction: &Tensor,
    slope: f64,
) -> (Tensor, f64, Tensor, bool) {
    let mut t = 1.0;
    let g_norm = g.norm().double_value(&[]);
    loop {
        let theta_new = theta + direction * t;
        let (f_new, g_new) = problem.value_and_grad(&theta_new);
        let armijo = f_new <= f + 1e-4 * t * slope;
        let flat = (f_new - f).abs() <= 1e-13 * f.abs().max(1.0)
            && g_new.norm().double_value(&[]) < g_norm;
        if armijo || flat {
            return (theta_new, f_new, g_new, false);
        }
        t *= 0.5;
        if t < 1e-20 {
            return (theta_new, f_new, g_new, true);
        }
    }
}
