//! The admission endpoints as a property: whatever the body, no panic,
//! and a 200 whose patch applies to what was sent, or a 400. Bodies are
//! the fixtures mangled at random; a fixed corpus of seeds runs every time
//! beside a fresh one, and `BATON_FUZZ_SEED` replays one seed alone.

use super::*;

fn random_string(rng: &mut fastrand::Rng) -> String {
    const PIECES: &[&str] = &[
        "",
        "true",
        "false",
        "Pod",
        "v1",
        "apps",
        "CREATE",
        "baton.dev/inject",
        "0",
        "-1",
        "fast",
        "é",
        "\u{0}",
        "/",
        "web",
        "9095",
        "1s",
        "64Mi",
    ];
    if rng.bool() {
        PIECES[rng.usize(..PIECES.len())].to_owned()
    } else {
        (0..rng.usize(..12)).map(|_| rng.char(..)).collect()
    }
}

fn random_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    match rng.u8(..if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64() * 1e6),
        4 => Value::String(random_string(rng)),
        5 => Value::Array(
            (0..rng.usize(..4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.usize(..4))
                .map(|_| (random_string(rng), random_value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// Every node of `v`, as the tokens of its JSON pointer.
fn node_paths(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    let children: Vec<(String, &Value)> = match v {
        Value::Object(map) => map.iter().map(|(k, c)| (k.clone(), c)).collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, c)| (i.to_string(), c))
            .collect(),
        _ => return,
    };
    for (token, child) in children {
        prefix.push(token);
        node_paths(child, prefix, out);
        prefix.pop();
    }
}

/// Replaces or removes one node, picked uniformly among all nodes of `v`.
fn mutate_somewhere(rng: &mut fastrand::Rng, v: &mut Value) {
    use json_patch::{PatchOperation, RemoveOperation, ReplaceOperation, jsonptr::PointerBuf};
    let mut paths = Vec::new();
    node_paths(v, &mut Vec::new(), &mut paths);
    let tokens = &paths[rng.usize(..paths.len())];
    let path = PointerBuf::from_tokens(tokens);
    let is_string = path.resolve(v).is_ok_and(Value::is_string);
    let op = if is_string && rng.u8(..3) != 0 {
        // Keep the shape, change the meaning: names, annotation values, kinds.
        PatchOperation::Replace(ReplaceOperation {
            path,
            value: Value::String(random_string(rng)),
        })
    } else if rng.u8(..3) == 0 {
        PatchOperation::Remove(RemoveOperation { path })
    } else {
        PatchOperation::Replace(ReplaceOperation {
            path,
            value: random_value(rng, 2),
        })
    };
    // Removing the root fails: then the body stays as it was, which is fine too.
    let _ = json_patch::patch(v, &[op]);
}

/// A body, and the endpoint its fixture was meant for.
fn random_body(
    rng: &mut fastrand::Rng,
    fixtures: &[(Vec<u8>, &'static str)],
) -> (Vec<u8>, &'static str) {
    let (base, path) = &fixtures[rng.usize(..fixtures.len())];
    let path = if rng.u8(..10) == 0 { "/validate" } else { path };
    let body = match rng.u8(..8) {
        0 => (0..rng.usize(..256)).map(|_| rng.u8(..)).collect(),
        1 => random_value(rng, 4).to_string().into_bytes(),
        2 => base[..rng.usize(..base.len())].to_vec(),
        _ => {
            let mut v: Value = serde_json::from_slice(base).expect("fixture is JSON");
            for _ in 0..rng.usize(1..4) {
                mutate_somewhere(rng, &mut v);
            }
            v.to_string().into_bytes()
        }
    };
    (body, path)
}

#[tokio::test]
async fn random_and_mangled_bodies_never_panic_and_get_200_or_400() {
    let fixtures: Vec<(Vec<u8>, &str)> = [
        ("pod-of-statefulset.json", "/mutate"),
        ("pod-of-deployment.json", "/mutate"),
        ("pod-bare.json", "/mutate"),
        ("pod-host-network.json", "/mutate"),
        ("pod-invalid-annotation.json", "/mutate"),
        ("pod-already-injected.json", "/mutate"),
        ("statefulset-valid.json", "/validate"),
        ("statefulset-invalid.json", "/validate"),
    ]
    .iter()
    .map(|(name, path)| (fixture(name), *path))
    .collect();
    // BATON_FUZZ_SEED=<seed> replays a failure, alone. Otherwise a fixed
    // corpus (the same cases on every run) and one fresh seed.
    let seeds: Vec<(u64, usize)> = match std::env::var("BATON_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![(seed, FRESH_CASES)],
        None => FUZZ_CORPUS
            .iter()
            .map(|&seed| (seed, CORPUS_CASES))
            .chain([(fastrand::u64(..), FRESH_CASES)])
            .collect(),
    };
    let h = harness();
    for (seed, cases) in seeds {
        fuzz_one_seed(&h, &fixtures, seed, cases).await;
    }
}

/// Seeds every run replays, and their number of cases; a fresh seed
/// gets more.
const FUZZ_CORPUS: [u64; 4] = [1, 7, 42, 20_261_201];
const CORPUS_CASES: usize = 300;
const FRESH_CASES: usize = 1500;

/// `cases` random or mangled bodies from `seed`: each gets a 200 with a
/// review whose patch applies to what was sent, or a 400.
async fn fuzz_one_seed(h: &Harness, fixtures: &[(Vec<u8>, &'static str)], seed: u64, cases: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut ok, mut bad, mut patched) = (0, 0, 0);
    for case in 0..cases {
        let (body, path) = random_body(&mut rng, fixtures);
        let (status, answer) = post(h, path, body.clone()).await;
        match status {
            StatusCode::OK => {
                ok += 1;
                let v: Value = serde_json::from_slice(&answer)
                    .unwrap_or_else(|e| panic!("seed {seed} case {case}: 200 without JSON: {e}"));
                assert!(
                    v["response"]["allowed"].is_boolean(),
                    "seed {seed} case {case}: {v}"
                );
                if v["response"].get("patch").is_some() {
                    // Whatever was injected, the patch applies to what was sent.
                    patched += 1;
                    let sent: Value = serde_json::from_slice(&body).expect("answered JSON");
                    let mut object = sent["request"]["object"].clone();
                    json_patch::patch(&mut object, &patch_of(&v["response"])).unwrap_or_else(
                        |e| {
                            panic!(
                                "seed {seed} case {case}: patch does not apply: {e}\nsent {}\npatch {:?}",
                                sent["request"]["object"],
                                patch_of(&v["response"])
                            )
                        },
                    );
                }
            }
            StatusCode::BAD_REQUEST => {
                bad += 1;
            }
            other => panic!(
                "seed {seed} case {case}: {path} answered {other} to {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }
    eprintln!("seed {seed}: {ok} answered ({patched} patched), {bad} refused");
    assert!(
        ok > cases / 15 && bad > cases / 15 && patched > cases / 75,
        "seed {seed}: {ok} ok, {bad} bad, {patched} patched of {cases}: the generator is too narrow"
    );
}
