//! Offline quality metrics of anomaly scores against labels: ROC-AUC and PR-AUC.
//!
//! Both treat larger scores as more anomalous and `true` labels as anomalies (the positive
//! class). Ties are handled exactly: ROC-AUC counts a tied (anomaly, normal) pair as one half
//! (the Mann-Whitney U statistic with average ranks), and PR-AUC is scikit-learn's
//! `average_precision_score`, which puts a threshold only between distinct score values, so
//! the order of tied points never matters. NaN scores sort above every number (`f64::total_cmp`
//! order for positive NaN); callers should not feed them.

/// Area under the ROC curve, or `None` when the labels hold only one class.
///
/// Equals the probability that a random anomaly scores above a random normal point, ties
/// counting one half.
pub fn roc_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let order = sorted_order(&scores[..n], false);
    let positives = labels[..n].iter().filter(|l| **l).count();
    let negatives = n - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Sum of the (1-based, tie-averaged) ranks of the positives, ascending by score.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && scores[order[j]].total_cmp(&scores[order[i]]).is_eq() {
            j += 1;
        }
        let avg_rank = (i + 1 + j) as f64 / 2.0;
        let pos_in_group = order[i..j].iter().filter(|k| labels[**k]).count();
        rank_sum += avg_rank * pos_in_group as f64;
        i = j;
    }
    let p = positives as f64;
    let u = rank_sum - p * (p + 1.0) / 2.0;
    Some(u / (p * negatives as f64))
}

/// Average precision (area under the precision-recall curve, step-wise, as scikit-learn's
/// `average_precision_score`), or `None` when there is no anomaly.
///
/// AP = sum over distinct score thresholds t (descending) of (R(t) - R(prev)) * P(t).
pub fn pr_auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let n = scores.len().min(labels.len());
    let order = sorted_order(&scores[..n], true);
    let positives = labels[..n].iter().filter(|l| **l).count();
    if positives == 0 {
        return None;
    }
    let mut ap = 0.0;
    let mut true_pos = 0usize;
    let mut i = 0;
    while i < n {
        let mut j = i;
        let mut group_pos = 0;
        while j < n && scores[order[j]].total_cmp(&scores[order[i]]).is_eq() {
            group_pos += labels[order[j]] as usize;
            j += 1;
        }
        if group_pos > 0 {
            true_pos += group_pos;
            let precision = true_pos as f64 / j as f64;
            ap += group_pos as f64 / positives as f64 * precision;
        }
        i = j;
    }
    Some(ap)
}

/// Indices of `scores` sorted ascending (or descending), stably.
fn sorted_order(scores: &[f64], descending: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    if descending {
        order.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    } else {
        order.sort_by(|a, b| scores[*a].total_cmp(&scores[*b]));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_auc_is_one_for_perfect_separation_and_half_for_all_ties() {
        let labels = [false, false, true, false, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.9, 0.3, 0.8], &labels), Some(1.0));
        assert_eq!(roc_auc(&[0.9, 0.8, 0.1, 0.7, 0.2], &labels), Some(0.0));
        assert_eq!(roc_auc(&[0.5; 5], &labels), Some(0.5));
    }

    #[test]
    fn roc_auc_counts_tied_pairs_as_one_half() {
        // positives: 0.5, 0.9; negatives: 0.5, 0.1. Pairs: (0.5,0.5)=0.5, (0.5,0.1)=1,
        // (0.9,0.5)=1, (0.9,0.1)=1 -> 3.5 / 4.
        let auc = roc_auc(&[0.5, 0.9, 0.5, 0.1], &[true, true, false, false]);
        assert_eq!(auc, Some(0.875));
    }

    #[test]
    fn roc_auc_needs_both_classes() {
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
        assert_eq!(roc_auc(&[0.1, 0.2], &[false, false]), None);
        assert_eq!(roc_auc(&[], &[]), None);
    }

    #[test]
    fn pr_auc_matches_scikit_learn_examples() {
        // sklearn docs: average_precision_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) = 0.8333...
        let ap = pr_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((ap - 0.833_333_333_333_333_4).abs() < 1e-12, "{ap}");
        // All tied: one threshold, precision = prevalence.
        let ap = pr_auc(&[0.3; 4], &[true, false, false, false]).unwrap();
        assert!((ap - 0.25).abs() < 1e-12, "{ap}");
        assert_eq!(pr_auc(&[0.9, 0.1], &[true, false]), Some(1.0));
        assert_eq!(pr_auc(&[0.9, 0.1], &[false, false]), None);
    }

    #[test]
    fn pr_auc_does_not_depend_on_the_order_of_tied_points() {
        let a = pr_auc(&[0.5, 0.5, 0.2, 0.9], &[true, false, true, false]);
        let b = pr_auc(&[0.5, 0.5, 0.2, 0.9], &[false, true, true, false]);
        assert_eq!(a, b);
    }
}
