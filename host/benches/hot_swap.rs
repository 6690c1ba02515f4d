//! How fast policies change: upload-to-active (the validation gate with a
//! warm compile cache, then the swap), and a gateway's start with 12
//! policies, with the compile cache warm and with it off.
//!
//! Run: `cargo bench -p switchyard --bench hot_swap`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::clock::SystemClock;
use switchyard::config::Config;
use switchyard::gateway::{Gateway, Upstreams};
use switchyard::policy::{builtin, PolicyKind};

/// Four groups with three policies each; the deployments point at a closed
/// port, since nothing is called.
fn config(cache_dir: &std::path::Path, compile_cache: bool) -> Config {
    let mut text = format!(
        "[policy_runtime]\ncompile_cache = {compile_cache}\ncache_dir = \"{}\"\n",
        cache_dir.display()
    );
    for i in 0..4 {
        text.push_str(&format!(
            "[[deployments]]\nid = \"d{i}\"\nmodel_id = \"m{i}\"\nendpoint_url = \"http://127.0.0.1:9\"\ncredentials = {{ source = \"static\", access_key_id = \"x\", secret_access_key = \"x\" }}\n"
        ));
    }
    let selections = ["priority", "round-robin", "hybrid", "sticky"];
    let cooldowns = ["adaptive", "exponential", "error-aware", "fixed"];
    let fallbacks = ["cascade", "spread", "same-model-first", "cascade"];
    for i in 0..4 {
        text.push_str(&format!(
            "[[model_groups]]\nname = \"g{i}\"\ndeployments = [\"d{i}\"]\n\
             [model_groups.policies.selection]\nname = \"{}\"\n\
             [model_groups.policies.cooldown]\nname = \"{}\"\n\
             [model_groups.policies.fallback]\nname = \"{}\"\n",
            selections[i], cooldowns[i], fallbacks[i]
        ));
    }
    Config::parse(&text, "bench").unwrap()
}

fn bench(c: &mut Criterion) {
    let cache_dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    let warm = config(&cache_dir, true);
    let cold = config(&cache_dir, false);
    let clock = SystemClock::shared();
    // Fill the cache once.
    Gateway::build(&warm, clock.clone(), &Upstreams::Aws).unwrap();

    let mut group = c.benchmark_group("start with 12 policies");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("compile cache warm", |b| {
        b.iter(|| Gateway::build(&warm, clock.clone(), &Upstreams::Aws).unwrap())
    });
    group.bench_function("compile cache off", |b| {
        b.iter(|| Gateway::build(&cold, clock.clone(), &Upstreams::Aws).unwrap())
    });
    group.finish();

    let gateway = Gateway::build(&warm, clock.clone(), &Upstreams::Aws).unwrap();
    let component = builtin::find(PolicyKind::Selection, "round-robin")
        .unwrap()
        .component;
    let mut group = c.benchmark_group("upload to active");
    group.sample_size(30);
    group.bench_function(
        format!(
            "round-robin ({} KB), compile cache warm",
            component.len() / 1024
        ),
        |b| {
            b.iter(|| {
                gateway
                    .swapper()
                    .upload("g0", PolicyKind::Selection, component.to_vec(), None, true)
                    .unwrap()
            })
        },
    );
    group.finish();
    let _ = std::fs::remove_dir_all(cache_dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
