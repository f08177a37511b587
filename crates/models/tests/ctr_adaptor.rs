//! KAR's hybrid-expert adaptor and CTR backbones: gate weights sum to 1, shapes are
//! right, and gradients reach every expert and every backbone's weights.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use llmrec_models::ctr::{
    AdaptorConfig, Backbone, CtrBatch, CtrConfig, CtrModel, HybridExpert, bce_with_logits,
};
use llmrec_models::init::seeded;

fn cfg(backbone: Backbone) -> CtrConfig {
    CtrConfig {
        backbone,
        items: 10,
        genres: 3,
        ratings: 5,
        emb: 4,
        mlp: vec![8, 4],
        cross_layers: 2,
        attention_hidden: 6,
        adaptor: AdaptorConfig {
            shared: 2,
            dedicated: 3,
            hidden: 5,
        },
    }
}

fn batch(b: usize, towers: usize, width: usize) -> (CtrBatch, Tensor) {
    let dev = Device::Cpu;
    let ids: Vec<u32> = (0..b as u32).map(|i| 1 + i % 10).collect();
    let genres: Vec<u32> = ids.iter().map(|i| 1 + i % 3).collect();
    let hist: Vec<u32> = (0..b * 5).map(|i| (i % 11) as u32).collect();
    let mask: Vec<f32> = hist
        .iter()
        .map(|&h| if h == 0 { 0.0 } else { 1.0 })
        .collect();
    let hg: Vec<u32> = hist
        .iter()
        .map(|&h| if h == 0 { 0 } else { 1 + h % 3 })
        .collect();
    let hr: Vec<u32> = hist
        .iter()
        .map(|&h| if h == 0 { 0 } else { 1 + h % 5 })
        .collect();
    let knowledge = (0..towers)
        .map(|t| {
            Tensor::randn(0f32, 1.0, (b, width), &dev)
                .unwrap()
                .affine(1.0, t as f64)
                .unwrap()
        })
        .collect();
    let labels: Vec<f32> = (0..b).map(|i| (i % 2) as f32).collect();
    (
        CtrBatch {
            item: Tensor::new(ids.as_slice(), &dev).unwrap(),
            genre: Tensor::new(genres.as_slice(), &dev).unwrap(),
            hist_item: Tensor::from_vec(hist, (b, 5), &dev).unwrap(),
            hist_genre: Tensor::from_vec(hg, (b, 5), &dev).unwrap(),
            hist_rating: Tensor::from_vec(hr, (b, 5), &dev).unwrap(),
            hist_mask: Tensor::from_vec(mask, (b, 5), &dev).unwrap(),
            knowledge,
        },
        Tensor::new(labels.as_slice(), &dev).unwrap(),
    )
}

#[test]
fn gates_sum_to_one_and_shapes_are_right() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let a = HybridExpert::new(vb, &cfg(Backbone::DeepFm).adaptor, 2, 7, 4).unwrap();
    seeded(&vm, 1).unwrap();
    let x = Tensor::randn(0f32, 1.0, (6, 7), &Device::Cpu).unwrap();
    for tower in 0..2 {
        let (out, gates) = a.forward(tower, &x).unwrap();
        assert_eq!(out.dims(), &[6, 4]);
        assert_eq!(gates.dims(), &[6, 5]);
        for row in gates.sum(1).unwrap().to_vec1::<f32>().unwrap() {
            assert!((row - 1.0).abs() < 1e-5, "gates sum to {row}");
        }
    }
    assert!(a.forward(2, &x).is_err());
}

#[test]
fn gradients_reach_every_expert_and_every_weight() {
    for backbone in Backbone::ALL {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let model = CtrModel::new(vb, &cfg(backbone), 2, 7).unwrap();
        seeded(&vm, 2).unwrap();
        let (b, labels) = batch(16, 2, 7);
        let logits = model.forward(&b).unwrap();
        assert_eq!(logits.dims(), &[16]);
        assert_eq!(model.fields(&b).unwrap().dims(), &[16, 7, 4]);
        let loss = bce_with_logits(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        let data = vm.data().lock().unwrap();
        let mut experts = 0;
        for (name, var) in data.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{}: no gradient for {name}", backbone.name()));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // Embedding rows never looked up get none; every weight matrix gets some.
            if !name.ends_with("bias") || name.contains("adaptor") {
                assert!(norm > 0.0, "{}: zero gradient for {name}", backbone.name());
            }
            experts += (name.contains("expert") || name.contains("shared")) as usize;
        }
        // 2 shared + 2 towers × 3 dedicated experts, 4 tensors each.
        assert_eq!(experts, (2 + 2 * 3) * 4, "{}", backbone.name());
        // Without knowledge the batch must carry none.
        assert!(model.forward(&batch(4, 0, 7).0).is_err());
    }
}

#[test]
fn bce_matches_the_formula() {
    let z = Tensor::new(&[0.0f32, 2.0, -3.0], &Device::Cpu).unwrap();
    let y = Tensor::new(&[1.0f32, 0.0, 0.0], &Device::Cpu).unwrap();
    let got = bce_with_logits(&z, &y).unwrap().to_scalar::<f32>().unwrap();
    let p = |z: f32| 1.0 / (1.0 + (-z).exp());
    let want = (-(p(0.0)).ln() - (1.0 - p(2.0)).ln() - (1.0 - p(-3.0)).ln()) / 3.0;
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
}
