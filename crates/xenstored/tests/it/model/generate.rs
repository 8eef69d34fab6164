//! The proptest strategies: node paths in a small tree, the operations on
//! them, and sequences of steps with the read / change outside / read-again
//! probes.

use proptest::prelude::*;

use super::predict::{NodeOp, Step};

pub(super) fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..3)
            .prop_map(|parts| {
                let mut p = "/m".to_string();
                for part in parts {
                    p.push('/');
                    p.push_str(part);
                }
                p
            }),
        1 => Just("/".to_string()),
        1 => Just("/tool".to_string()),
    ]
}

pub(super) fn node_op() -> impl Strategy<Value = NodeOp> {
    let value = prop::collection::vec(prop::sample::select(vec![0u8, 1, b'x', b'y', 0xff]), 0..6);
    let perm = prop::sample::select(vec!["n0", "r1", "b2", "w3", "n4"]).prop_map(String::from);
    prop_oneof![
        4 => (path(), value).prop_map(|(p, v)| NodeOp::Write(p, v)),
        1 => path().prop_map(NodeOp::Mkdir),
        // Not the model's `/`: the daemon's node there is an ordinary one.
        2 => path().prop_filter("the root", |p| p != "/").prop_map(NodeOp::Rm),
        3 => path().prop_map(NodeOp::Read),
        2 => path().prop_map(NodeOp::Directory),
        1 => path().prop_map(NodeOp::GetPerms),
        1 => (path(), prop::collection::vec(perm, 1..3)).prop_map(|(p, v)| NodeOp::SetPerms(p, v)),
    ]
}

pub(super) fn step() -> impl Strategy<Value = Step> {
    let client = 0usize..2;
    prop_oneof![
        12 => (client.clone(), node_op()).prop_map(|(c, op)| Step::Node(c, op)),
        2 => client.clone().prop_map(Step::Start),
        2 => (client, prop::bool::weighted(0.8)).prop_map(|(c, commit)| Step::End(c, commit)),
    ]
}

/// An operation that only looks: READ, DIRECTORY or GET_PERMS.
pub(super) fn look_op(p: String) -> impl Strategy<Value = NodeOp> {
    prop_oneof![
        Just(NodeOp::Read(p.clone())),
        Just(NodeOp::Directory(p.clone())),
        Just(NodeOp::GetPerms(p)),
    ]
}

/// An operation that changes `p` or what a listing of it shows: a write of
/// it or of a child, a removal, new permissions (owned by dom0, the only
/// domain every daemon under test knows).
pub(super) fn change_op(p: String) -> impl Strategy<Value = NodeOp> {
    let child = format!("{}/c", p.trim_end_matches('/'));
    let perms = prop::sample::select(vec![
        vec!["n0".to_string()],
        vec!["b0".to_string()],
        vec!["n0".to_string(), "r1".to_string()],
    ]);
    prop_oneof![
        Just(NodeOp::Write(p.clone(), b"changed".to_vec())),
        Just(NodeOp::Write(child.clone(), b"new".to_vec())),
        Just(NodeOp::Mkdir(child)),
        Just(NodeOp::Rm(p.clone())),
        perms.prop_map(move |perms| NodeOp::SetPerms(p.clone(), perms)),
    ]
}

/// The interleaving class the random steps rarely hit: client `c` in a
/// transaction looks at a node (or a missing one), the other client
/// changes it outside, and `c` looks again, the same way or another —
/// `c`'s second look must see its first (repeatable reads), and its commit
/// must fail.
pub(super) fn probe() -> impl Strategy<Value = Vec<Step>> {
    (0usize..2, path().prop_filter("the root", |p| p != "/")).prop_flat_map(|(c, p)| {
        (
            look_op(p.clone()),
            change_op(p.clone()),
            look_op(p),
            prop::bool::ANY,
        )
            .prop_map(move |(first, change, again, outside_in_tx)| {
                let mut steps = vec![Step::Start(c), Step::Node(c, first)];
                // The change comes from outside any transaction, or from
                // the other client's committed one.
                if outside_in_tx {
                    steps.extend([
                        Step::Start(1 - c),
                        Step::Node(1 - c, change),
                        Step::End(1 - c, true),
                    ]);
                } else {
                    steps.push(Step::Node(1 - c, change));
                }
                steps.extend([Step::Node(c, again), Step::End(c, true)]);
                steps
            })
    })
}

/// Random steps mixed with [`probe`]s.
pub(super) fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => step().prop_map(|s| vec![s]),
            1 => probe(),
        ],
        1..30,
    )
    .prop_map(|groups| groups.into_iter().flatten().collect())
}
