//! Rating prediction on the real MovieLens 1M table (`ml-1m/derived/ratings_ordered.tsv`
//! under `LLMREC_DATA_DIR`): the split keeps time order and never puts a held-out
//! rating in training, and the baselines order as collaborative filtering should.

use std::collections::HashMap;

use llmrec_data::loaders::load_ml1m_explicit;
use llmrec_pipelines::rating::protocol::split;
use llmrec_pipelines::rating::{MfGrid, RatingConfig, run_baselines};

#[test]
fn ml1m_split_holds_out_each_users_latest_ratings_and_the_baselines_order() {
    let Some(dir) = llmrec_testkit::dataset_path("ml-1m") else {
        return;
    };
    let data = load_ml1m_explicit(&dir).unwrap();
    assert_eq!(data.len(), 999_611);
    assert_eq!(data.histories.len(), 6_040);
    let s = split(&data, 0.1).unwrap();
    assert_eq!(s.train.len() + s.valid.len() + s.test.len(), 999_611);
    assert_eq!(s.short_users, 0);
    // Per user: every training position before every validation position, those
    // before every test position; the test part is a tenth of the history.
    let mut last_train: HashMap<u32, usize> = HashMap::new();
    for r in &s.train {
        let e = last_train.entry(r.user).or_insert(0);
        *e = (*e).max(r.position);
    }
    let mut first_valid: HashMap<u32, usize> = HashMap::new();
    for r in &s.valid {
        let e = first_valid.entry(r.user).or_insert(usize::MAX);
        *e = (*e).min(r.position);
        assert!(r.position > last_train[&r.user]);
    }
    for r in &s.test {
        assert!(r.position > last_train[&r.user]);
        assert!(first_valid.get(&r.user).is_some_and(|&v| r.position > v));
    }
    for (u, h) in &data.histories {
        let t = s.test.iter().filter(|r| r.user == *u).count();
        assert_eq!(t, (h.len() / 10).max(1), "user {u}");
        if *u > 40 {
            break;
        }
    }
    let cfg = RatingConfig {
        bias_regs: vec![5.0],
        bias_sweeps: 3,
        mf: MfGrid {
            factors: vec![8],
            regs: vec![0.05],
            lr: 0.01,
            epochs: 3,
            patience: 1,
        },
        ..RatingConfig::default()
    };
    let report = run_baselines(&data, &cfg, &mut |_| {}).unwrap();
    let rmse: Vec<f64> = report.methods.iter().map(|m| m.test.rmse).collect();
    assert_eq!(report.methods.len(), 3);
    assert!(rmse[1] < rmse[0] && rmse[2] < rmse[0], "{rmse:?}");
    assert!(
        report
            .methods
            .iter()
            .all(|m| m.test.auc > 0.5 || m.method == "global mean")
    );
}
