//! The training step's numbers do not depend on the number of threads: a GPT's loss and every gradient, computed
//! in a rayon pool of 1 thread and of 3 threads, agree bit for bit. (This is what lets `TrainOptions::workers` run
//! micro-batches on single-thread pools and still give the serial result, and a run give the same numbers on
//! machines with other core counts.) The batch is large enough that every op splits its rows into several tasks.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::model::{gpt, GptConfig};

fn loss_and_grads(threads: usize) -> (u32, Vec<(String, Vec<u32>)>) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let mut cfg = GptConfig::dense(300, 64, 48, 3, 2);
        cfg.dropout = 0.1;
        let vm = VarMap::new();
        let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        // 16 sequences of 64 tokens: 1,024 rows for the layer norms and the loss.
        let mut s = 7u64;
        let ids: Vec<u32> = (0..16 * 65)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 300) as u32
            })
            .collect();
        let all = Tensor::from_vec(ids, (16, 65), &Device::Cpu).unwrap();
        let x = all.narrow(1, 0, 64).unwrap().contiguous().unwrap();
        let y = all.narrow(1, 1, 64).unwrap().contiguous().unwrap();
        let loss = model
            .loss(&x, &y, candle_structured::ops::Mode::train(11))
            .unwrap();
        let grads = loss.backward().unwrap();
        let mut out = Vec::new();
        let data = vm.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for name in names {
            let g = grads
                .get(data[name].as_tensor())
                .expect("a gradient for every variable");
            let bits = g
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect();
            out.push((name.clone(), bits));
        }
        (loss.to_scalar::<f32>().unwrap().to_bits(), out)
    })
}

#[test]
fn loss_and_gradients_do_not_depend_on_the_thread_count() {
    let (l1, g1) = loss_and_grads(1);
    let (l3, g3) = loss_and_grads(3);
    assert_eq!(
        l1,
        l3,
        "loss {} vs {}",
        f32::from_bits(l1),
        f32::from_bits(l3)
    );
    assert!(g1.len() > 5);
    for ((n1, a), (n3, b)) in g1.iter().zip(&g3) {
        assert_eq!(n1, n3);
        let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
        assert_eq!(
            differ,
            0,
            "{n1}: {differ} of {} gradient values differ",
            a.len()
        );
    }
}
