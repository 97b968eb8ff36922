//! Submits of one owner arriving together share commits, and sharing changes nothing they
//! answer: the cap holds exactly, a repeated key inserts once, and a submit that cannot go
//! in fails alone.

use std::collections::HashSet;

use sakuga_scheduler::store::{Submits, Submitted};
use sakuga_testkit::TestEnv;
use uuid::Uuid;

use crate::plans::{new_job, store};

/// Runs every submit at once over `store`, returning the answers in the same order.
async fn all_at_once(
    store: &sakuga_scheduler::store::Store,
    jobs: Vec<sakuga_scheduler::job::NewJob>,
    cap: u32,
) -> Vec<Result<Submitted, String>> {
    let submits = Submits::new(store.clone());
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|job| {
            let submits = submits.clone();
            tokio::spawn(async move { submits.insert(job, cap, None, None).await.map_err(|e| e.to_string()) })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn one_owners_submits_arriving_together_share_commits_and_keep_the_cap_and_keys() {
    let env = TestEnv::new().await.unwrap();
    let store = store(&env, 4).await;
    let cap = 25;
    // 60 of alice's submits at once, ten of them with the same key, and 10 of bob's.
    let mut jobs: Vec<_> = (0..60).map(|i| new_job("alice", (i % 6 == 0).then_some("shot-1"))).collect();
    jobs.extend((0..10).map(|_| new_job("bob", None)));
    let answers = all_at_once(&store, jobs, cap).await;

    let answers: Vec<Submitted> = answers.into_iter().map(Result::unwrap).collect();
    let db = env.db().await.unwrap();
    let rows = db
        .query("SELECT owner_id, idempotency_key, xmin::text FROM jobs ORDER BY owner_id", &[])
        .await
        .unwrap();
    let alice: Vec<_> = rows.iter().filter(|r| r.get::<_, String>(0) == "alice").collect();
    assert_eq!(alice.len(), 25, "exactly the cap of alice's jobs went in");
    assert_eq!(rows.len() - alice.len(), 10, "bob's are his own: all went in");
    let keyed = alice.iter().filter(|r| r.get::<_, Option<String>>(1).is_some()).count();
    assert!(keyed <= 1, "the repeated key inserted {keyed} jobs");
    // Every answer naming a job names one that is in; the keyed ones all name the same.
    let ids: HashSet<Uuid> = answers.iter().filter_map(|s| s.inserted.as_ref()).map(|i| i.job.id).collect();
    let stored: i64 = db
        .query_one("SELECT count(*) FROM jobs WHERE id = ANY($1)", &[&ids.iter().collect::<Vec<_>>()])
        .await
        .unwrap()
        .get(0);
    assert_eq!(usize::try_from(stored).unwrap(), ids.len(), "every job answered is stored");
    let fresh = answers.iter().filter_map(|s| s.inserted.as_ref()).filter(|i| !i.deduplicated).count();
    assert_eq!(fresh, 35, "one answer per job inserted");
    let repeated: HashSet<Uuid> =
        answers.iter().step_by(6).take(10).filter_map(|s| s.inserted.as_ref()).map(|i| i.job.id).collect();
    assert!(repeated.len() <= 1, "the key answered {} different jobs", repeated.len());
    // Shared commits: fewer transactions than jobs (each job row carries the id of the
    // transaction that inserted it).
    let commits: HashSet<String> = alice.iter().map(|r| r.get(2)).collect();
    assert!(commits.len() < alice.len(), "{} commits for {} jobs: none shared", commits.len(), alice.len());
}

#[tokio::test]
async fn a_submit_that_cannot_go_in_fails_alone_when_it_arrives_with_others() {
    let env = TestEnv::new().await.unwrap();
    let store = store(&env, 2).await;
    let mut jobs: Vec<_> = (0..30).map(|_| new_job("alice", None)).collect();
    // A width the table's check refuses (the API validates it before; the store must
    // still fail only this one).
    jobs[15].spec.width = 65;
    let answers = all_at_once(&store, jobs, 100).await;
    for (i, answer) in answers.iter().enumerate() {
        if i == 15 {
            let e = answer.as_ref().unwrap_err();
            assert!(e.contains("database"), "{e}");
        } else {
            assert!(answer.as_ref().unwrap().inserted.is_some(), "submit {i}: {answer:?}");
        }
    }
    let db = env.db().await.unwrap();
    let rows: i64 = db.query_one("SELECT count(*) FROM jobs", &[]).await.unwrap().get(0);
    assert_eq!(rows, 29, "every other submit went in");
}
