//! The line of owners behind the claim: priority, then each owner's turn, then age; a claim
//! reads only the first rows of the line; a job queued while its owner is being claimed
//! from is never lost; rows left without jobs are pruned.

use std::{collections::HashSet, time::Duration};

use sakuga_scheduler::store::Store;
use sakuga_testkit::TestEnv;
use uuid::Uuid;

const LEASE: Duration = Duration::from_mins(1);

async fn store(env: &TestEnv) -> Store {
    let vault = sakuga_mesh::vault::Vault::connect(&env.vault_config()).await.unwrap();
    Store::new(sakuga_mesh::db::connect_with_vault(&vault, &env.database_config()).await.unwrap())
}

/// A queued job of `owner`, created `at` seconds after a fixed instant; `delayed` jobs may
/// not start for an hour.
#[allow(clippy::too_many_arguments)]
async fn queue(
    db: &tokio_postgres::Client,
    owner: &str,
    priority: i32,
    backend: &str,
    model: &str,
    at: f64,
    delayed: bool,
) -> Uuid {
    let id = Uuid::new_v4();
    db.execute(
        "INSERT INTO jobs (id, owner_id, kind, backend, model, prompt, composed_prompt, width, height, \
         steps, batch_size, frames, fps, seed, cfg_scale, sampler, priority, created_at, not_before) \
         VALUES ($1, $2, 'image', $3, $4, 'p', 'p', 64, 64, 1, 1, 0, 0, 1, 7, 'euler', $5, \
         timestamptz '2026-01-01 00:00:00+00' + $6 * interval '1 second', \
         CASE WHEN $7 THEN now() + interval '1 hour' END)",
        &[&id, &owner, &backend, &model, &priority, &at, &delayed],
    )
    .await
    .unwrap();
    id
}

async fn claim(store: &Store, models: Option<&[String]>, limit: u32) -> HashSet<Uuid> {
    let backends = ["comfyui".to_owned()];
    let claimed = store.claim("w1", &backends, models, limit, LEASE).await.unwrap();
    claimed.iter().map(|c| c.job.id).collect()
}

async fn line(db: &tokio_postgres::Client) -> Vec<(String, i32, String)> {
    db.query("SELECT owner_id, priority, backend FROM queue_heads ORDER BY owner_id, priority, backend", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn claims_take_priority_then_each_owners_turn_then_age_and_the_line_follows() {
    let env = TestEnv::new().await.unwrap();
    let store = store(&env).await;
    let db = env.db().await.unwrap();
    let a1 = queue(&db, "a", 0, "comfyui", "m1", 1.0, false).await;
    let a2 = queue(&db, "a", 0, "comfyui", "m1", 2.0, false).await;
    let a3 = queue(&db, "a", 0, "comfyui", "m1", 3.0, false).await;
    let b1 = queue(&db, "b", 0, "comfyui", "m1", 4.0, false).await;
    let c1 = queue(&db, "c", 5, "comfyui", "m1", 5.0, false).await;
    let c2 = queue(&db, "c", 5, "comfyui", "m1", 6.0, false).await;
    let d1 = queue(&db, "d", 9, "other", "m1", 0.0, false).await;
    let e1 = queue(&db, "e", 0, "comfyui", "m2", 0.5, false).await;
    let f1 = queue(&db, "f", 9, "comfyui", "m1", 0.0, true).await;

    // A warm claim takes only its models.
    assert_eq!(claim(&store, Some(&["m2".to_owned()]), 2).await, HashSet::from([e1]));
    // Priority 5 first (c's second job before the others' first: nobody else waits at 5),
    // then the first job of each owner at 0 by age, then second jobs. Not d (another
    // backend), not f (may not start yet).
    assert_eq!(claim(&store, None, 4).await, HashSet::from([c1, c2, a1, b1]));
    assert_eq!(claim(&store, None, 4).await, HashSet::from([a2, a3]));
    assert_eq!(claim(&store, None, 4).await, HashSet::new());
    // The line keeps only owners with queued jobs: d's and f's.
    let rows = line(&db).await;
    assert_eq!(rows, [("d".to_owned(), 9, "other".to_owned()), ("f".to_owned(), 9, "comfyui".to_owned())]);
    for id in [d1, f1] {
        let status: String =
            db.query_one("SELECT status FROM jobs WHERE id = $1", &[&id]).await.unwrap().get(0);
        assert_eq!(status, "queued");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn each_owners_first_job_comes_before_anyones_second_within_one_claim() {
    let env = TestEnv::new().await.unwrap();
    let store = store(&env).await;
    let db = env.db().await.unwrap();
    let mut firsts = HashSet::new();
    for (i, owner) in ["a", "b", "c"].iter().enumerate() {
        let at = f64::from(u8::try_from(i).unwrap()) * 100.0;
        firsts.insert(queue(&db, owner, 0, "comfyui", "m1", at, false).await);
        for k in 1..50 {
            queue(&db, owner, 0, "comfyui", "m1", at + f64::from(k), false).await;
        }
    }
    // a's fifty jobs are all older than b's and c's; one claim of three still takes one each.
    assert_eq!(claim(&store, None, 3).await, firsts);
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_queued_again_behind_the_rows_cursor_moves_the_cursor_back() {
    // Each row of the line is a cursor (the oldest queued job's time and id) and the claim
    // scans from it. Jobs created at the same instant go in id order; a job queued again
    // after its claim sorts before the cursor and must pull it back, or it would never be
    // claimed and its row would go when the rest were.
    let env = TestEnv::new().await.unwrap();
    let store = store(&env).await;
    let db = env.db().await.unwrap();
    let mut same = Vec::new();
    for _ in 0..3 {
        same.push(queue(&db, "a", 0, "comfyui", "m1", 1.0, false).await);
    }
    same.sort();
    let later = queue(&db, "a", 0, "comfyui", "m1", 2.0, false).await;
    let backends = ["comfyui".to_owned()];
    let first = store.claim("w1", &backends, None, 1, LEASE).await.unwrap().remove(0);
    assert_eq!(first.job.id, same[0], "same instant: lowest id first");
    assert_eq!(claim(&store, None, 1).await, HashSet::from([same[1]]));
    assert!(store.unclaim(first.job.id, first.lease_token).await.unwrap(), "handed back");
    assert_eq!(
        claim(&store, None, 1).await,
        HashSet::from([same[0]]),
        "the job behind the cursor comes first"
    );
    assert_eq!(claim(&store, None, 5).await, HashSet::from([same[2], later]));
    assert!(line(&db).await.is_empty(), "the line is empty with the queue");
    env.cleanup().await;
}

#[tokio::test]
async fn jobs_queued_while_their_owners_are_claimed_from_are_all_claimed_exactly_once() {
    let env = TestEnv::new().await.unwrap();
    let store = store(&env).await;
    let owners = ["a", "b", "c"];
    let per_task = 100;
    let mut submitters = Vec::new();
    for t in 0..3 {
        let db = env.db().await.unwrap();
        submitters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for k in 0..per_task {
                let owner = owners[(t + k) % owners.len()];
                let at = f64::from(u32::try_from(k).unwrap());
                ids.push(queue(&db, owner, 0, "comfyui", "m1", at, false).await);
            }
            ids
        }));
    }
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut claimers = Vec::new();
    for _ in 0..3 {
        let (store, done) = (store.clone(), done.clone());
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let batch = claim(&store, None, 3).await;
                if batch.is_empty() && finished {
                    return got;
                }
                got.extend(batch);
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut queued = HashSet::new();
    for s in submitters {
        queued.extend(s.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    // What the claimers' last empty claims could not see (rows a sibling held) is left for
    // one more pass, as the dispatcher's poll would find it.
    claimed.extend(claim(&store, None, 1_000).await);
    let distinct: HashSet<Uuid> = claimed.iter().copied().collect();
    assert_eq!(distinct.len(), claimed.len(), "a job was claimed twice");
    assert_eq!(distinct, queued, "every queued job was claimed");
    // A claim whose row another claim changed after its snapshot leaves the row alone (it
    // may hold a job that snapshot could not see); the prune takes what is left empty.
    store.prune_queue_heads(1_000).await.unwrap();
    assert!(line(&env.db().await.unwrap()).await.is_empty(), "the line is empty with the queue");
    env.cleanup().await;
}

#[tokio::test]
async fn owners_left_without_queued_jobs_leave_the_line_when_it_is_pruned() {
    let env = TestEnv::new().await.unwrap();
    let store = store(&env).await;
    let db = env.db().await.unwrap();
    let gone = queue(&db, "gone", 0, "comfyui", "m1", 1.0, false).await;
    queue(&db, "stays", 0, "comfyui", "m1", 2.0, false).await;
    store.cancel(gone, None).await.unwrap().unwrap();
    assert_eq!(line(&db).await.len(), 2, "a canceled job leaves its row behind");
    assert_eq!(store.prune_queue_heads(1_000).await.unwrap(), 1);
    assert_eq!(line(&db).await, [("stays".to_owned(), 0, "comfyui".to_owned())]);
    assert_eq!(store.prune_queue_heads(1_000).await.unwrap(), 0);
    env.cleanup().await;
}
