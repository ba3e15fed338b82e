//! The one matrix product every op here is built from: `c (+)= alpha · op(a) · op(b)` over
//! strided views, through the `gemm` crate (the GEMM candle uses, as the native forward path
//! does). Transposed operands are only other strides, so the backward passes never copy a
//! matrix to transpose it.

use crate::error::{ClipError, Result};

/// A matrix operand or destination seen through strides: element `(i, j)` is
/// `data[offset + i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strides {
    pub offset: usize,
    pub rs: usize,
    pub cs: usize,
}

impl Strides {
    /// A dense row-major `[rows, cols]` matrix.
    pub fn rows(cols: usize) -> Self {
        Self {
            offset: 0,
            rs: cols,
            cs: 1,
        }
    }

    /// The same matrix read transposed.
    pub fn t(self) -> Self {
        Self {
            offset: self.offset,
            rs: self.cs,
            cs: self.rs,
        }
    }

    /// Starts `offset` values further in.
    pub fn at(self, offset: usize) -> Self {
        Self {
            offset: self.offset + offset,
            ..self
        }
    }

    /// One past the last index a `rows x cols` view touches.
    fn end(self, rows: usize, cols: usize) -> usize {
        self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs + 1
    }
}

/// `c = alpha · a · b` (or `c += …` with `accumulate`) for `a: m x k`, `b: k x n`, `c: m x n`
/// seen through their strides. Bounds are checked from the strides, so any arguments are
/// safe; `parallel` spreads the product over rayon's threads (off inside parallel loops).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    c: &mut [f32],
    cv: Strides,
    a: &[f32],
    av: Strides,
    b: &[f32],
    bv: Strides,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    accumulate: bool,
    parallel: bool,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    if cv.end(m, n) > c.len() {
        return Err(ClipError::input(
            "autograd gemm",
            format!(
                "C holds {} values, a {m} x {n} result touches {}",
                c.len(),
                cv.end(m, n)
            ),
        ));
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[cv.offset + i * cv.rs + j * cv.cs] = 0.0;
                }
            }
        }
        return Ok(());
    }
    for (what, len, need) in [("A", a.len(), av.end(m, k)), ("B", b.len(), bv.end(k, n))] {
        if need > len {
            return Err(ClipError::input(
                "autograd gemm",
                format!("{what} holds {len} values, a {m} x {n} x {k} product touches {need}"),
            ));
        }
    }
    let par = if parallel && m * n * k >= 1 << 15 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the strides reach lies inside its slice (checked above), and `c` is
    // borrowed mutably, so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(cv.offset),
            cv.cs as isize,
            cv.rs as isize,
            accumulate,
            a.as_ptr().add(av.offset),
            av.cs as isize,
            av.rs as isize,
            b.as_ptr().add(bv.offset),
            bv.cs as isize,
            bv.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}
