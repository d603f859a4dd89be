//! Medians and spread over the runs of one row.
use serde::{Deserialize, Serialize};

/// The median of a row's runs and their range (min-max): with 5 runs an interquartile range
/// would rest on one or two values, the full range says more about a noisy machine.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many runs had the figure.
    pub n: usize,
}

impl Stat {
    /// `None` when no run has the figure; NaN values are ignored.
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// `a / b` of two medians, `None` when either is missing or `b` is 0.
pub(crate) fn ratio(a: Option<Stat>, b: Option<Stat>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (b.median != 0.0).then(|| a.median / b.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Stat::of([5.0, 1.0, 3.0, 9.0, 7.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (5.0, 1.0, 9.0, 5));
        let s = Stat::of([4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.5, 1.0, 4.0, 4));
    }

    #[test]
    fn missing_values_and_ratios() {
        assert_eq!(Stat::of([]), None);
        assert_eq!(Stat::of([f64::NAN]), None);
        assert_eq!(Stat::of([f64::NAN, 2.0]).unwrap().n, 1);
        let a = Stat::of([6.0]);
        let b = Stat::of([3.0]);
        assert_eq!(ratio(a, b), Some(2.0));
        assert_eq!(ratio(a, None), None);
        assert_eq!(ratio(a, Stat::of([0.0])), None);
    }
}
