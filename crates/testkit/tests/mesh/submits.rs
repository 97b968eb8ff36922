//! Submits of one owner arriving together share commits, and sharing changes nothing they
//! answer: the cap holds exactly, a repeated key inserts once, and a submit that cannot go
//! in fails alone. A submit with a free slot fills it before it commits.

use std::collections::HashSet;

use sakuga_scheduler::store::{FreeSlot, Submits, Submitted};
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

#[tokio::test]
async fn a_job_for_a_free_slot_goes_in_assigned_only_when_nothing_of_its_backends_waits() {
    let env = TestEnv::new().await.unwrap();
    let store = store(&env, 2).await;
    let submits = Submits::new(store.clone());
    let backends = ["builtin".to_owned()];
    let lease = std::time::Duration::from_mins(1);
    let slot = FreeSlot { worker_id: "w1", backends: &backends, lease };
    let db = env.db().await.unwrap();
    let row = |id: Uuid| {
        let db = &db;
        async move {
            let r = db
                .query_one(
                    "SELECT status, worker_id, attempts, lease_token IS NOT NULL FROM jobs WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (r.get::<_, String>(0), r.get::<_, Option<String>>(1), r.get::<_, i32>(2), r.get::<_, bool>(3))
        }
    };
    let line =
        || async { db.query_one("SELECT count(*) FROM queue_heads", &[]).await.unwrap().get::<_, i64>(0) };
    // Every write of a job row, in order: what a job went through, not only where it is.
    db.batch_execute(
        "CREATE TABLE job_writes (n bigserial, id uuid, write text); \
         CREATE FUNCTION note_job_write() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ \
         BEGIN INSERT INTO job_writes (id, write) VALUES (NEW.id, TG_OP || ' ' || NEW.status); RETURN NULL; END $$; \
         CREATE TRIGGER note_job_write AFTER INSERT OR UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION note_job_write();",
    )
    .await
    .unwrap();
    let writes = |id: Uuid| {
        let db = &db;
        async move {
            let rows =
                db.query("SELECT write FROM job_writes WHERE id = $1 ORDER BY n", &[&id]).await.unwrap();
            rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>()
        }
    };

    // Nothing waits: the job goes in assigned to the slot, never queued, never in line.
    let first = submits.insert(new_job("alice", None), 100, None, Some(&slot)).await.unwrap();
    let first_id = first.inserted.as_ref().unwrap().job.id;
    let assigned = first.assigned.expect("the job went to the slot");
    assert_eq!((assigned.job.id, assigned.job.lease_token), (first_id, Some(assigned.lease_token)));
    assert_eq!(row(first_id).await, ("assigned".into(), Some("w1".into()), 1, true));
    assert_eq!(writes(first_id).await, ["INSERT assigned"], "one write: never queued, then claimed");
    assert_eq!(line().await, 0, "a job that went in assigned has no place in the line");

    // Bob's job waits (no slot for it); then carol's submit finds a free slot: her job
    // does not jump the line. It waits behind bob's, and the slot is left to a claim, which
    // takes bob's first.
    let bob = submits.insert(new_job("bob", None), 100, None, None).await.unwrap();
    let bob_id = bob.inserted.unwrap().job.id;
    assert_eq!(row(bob_id).await, ("queued".into(), None, 0, false));
    let carol = submits.insert(new_job("carol", None), 100, None, Some(&slot)).await.unwrap();
    let carol_id = carol.inserted.unwrap().job.id;
    assert!(carol.assigned.is_none(), "carol's job went to the slot ahead of bob's");
    assert_eq!(row(carol_id).await, ("queued".into(), None, 0, false));
    assert_eq!(writes(carol_id).await, ["INSERT queued"]);
    let next = store.claim("w1", &backends, None, 1, lease).await.unwrap();
    assert_eq!(next.iter().map(|c| c.job.id).collect::<Vec<_>>(), [bob_id]);

    // A slot of another backend is not held back by what waits for this one.
    let other = ["comfyui".to_owned()];
    let elsewhere = FreeSlot { worker_id: "w2", backends: &other, ..slot };
    let mut job = new_job("dave", None);
    job.spec.backend = "comfyui".into();
    let dave = submits.insert(job, 100, None, Some(&elsewhere)).await.unwrap();
    let dave_id = dave.inserted.unwrap().job.id;
    assert_eq!(row(dave_id).await, ("assigned".into(), Some("w2".into()), 1, true));
}
