//! The plans the queue's statements keep. A connection plans each statement once, at its
//! first run, for the tables as they are then, and keeps that plan while `jobs` grows;
//! so plans made on an empty database must already read `jobs` by index probes only.

use std::{collections::HashMap, time::Duration};

use sakuga_scheduler::{
    job::{Kind, NewJob, Spec},
    store::{ClaimFor, FreeSlot, Store, Submits},
};
use sakuga_testkit::TestEnv;
use serde_json::Value;
use uuid::Uuid;

const LEASE: Duration = Duration::from_mins(1);

/// A queued 64×64 builtin job of `owner`, with idempotency key `key`.
pub(crate) fn new_job(owner: &str, key: Option<&str>) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        owner_id: owner.into(),
        spec: Spec {
            kind: Kind::Image,
            prompt: "p".into(),
            negative_prompt: String::new(),
            width: 64,
            height: 64,
            steps: 1,
            batch_size: 1,
            frames: 0,
            fps: 0,
            seed: 1,
            cfg_scale: 7.0,
            sampler: "euler".into(),
            backend: "builtin".into(),
            model: String::new(),
        },
        composed_prompt: "p".into(),
        composed_negative: String::new(),
        project_id: None,
        character_ids: Vec::new(),
        trace_context: HashMap::new(),
        priority: 0,
        idempotency_key: key.map(str::to_owned),
        max_attempts: 3,
        webhook_endpoint_id: None,
    }
}

/// A store over a pool of `connections`.
pub(crate) async fn store(env: &TestEnv, connections: usize) -> Store {
    let vault = sakuga_mesh::vault::Vault::connect(&env.vault_config()).await.unwrap();
    let db = sakuga_mesh::config::DatabaseConfig { max_connections: connections, ..env.database_config() };
    Store::new(sakuga_mesh::db::connect_with_vault(&vault, &db).await.unwrap())
}

/// Every scan of one of `tables` in a plan (EXPLAIN's JSON form) that is not an index or
/// address probe with a condition: a sequential scan, or an index read whole.
fn whole_reads(plan: &Value, tables: &[&str], found: &mut Vec<String>) {
    if plan.get("Relation Name").and_then(Value::as_str).is_some_and(|t| tables.contains(&t)) {
        let kind = plan["Node Type"].as_str().unwrap_or_default();
        let probe = match kind {
            "Index Scan" | "Index Only Scan" => plan.get("Index Cond").is_some(),
            "Bitmap Heap Scan" => plan["Plans"]
                .as_array()
                .is_some_and(|p| p.iter().all(|child| child.get("Index Cond").is_some())),
            "Tid Scan" | "ModifyTable" => true,
            _ => false,
        };
        if !probe {
            found.push(format!(
                "{kind} of {} ({})",
                plan["Relation Name"].as_str().unwrap_or_default(),
                plan.get("Index Name").and_then(Value::as_str).unwrap_or("no index")
            ));
        }
    }
    for child in plan.get("Plans").and_then(Value::as_array).into_iter().flatten() {
        whole_reads(child, tables, found);
    }
}

#[tokio::test]
async fn plans_made_on_an_empty_queue_read_jobs_by_index_probes_only() {
    let env = TestEnv::new().await.unwrap();
    // One connection: the statements below are planned on it, and it is the one asked.
    let store = store(&env, 1).await;
    let backends = ["builtin".to_owned()];
    let hand_off = FreeSlot { worker_id: "w1", backends: &backends, lease: LEASE };

    // The hot path on an empty database: a submit for a free slot (in assigned), a submit
    // with an idempotency key (queued), a claim of the dispatcher, completions refilling
    // their slot.
    let submits = Submits::new(store.clone());
    let first = submits.insert(new_job("alice", None), 100, None, Some(&hand_off)).await.unwrap();
    submits.insert(new_job("alice", Some("k1")), 100, None, None).await.unwrap();
    submits.insert(new_job("bob", None), 100, None, None).await.unwrap();
    let mut claimed: Vec<_> = first.assigned.into_iter().collect();
    claimed.extend(store.claim("w1", &backends, None, 1, LEASE).await.unwrap());
    assert_eq!(claimed.len(), 2, "the first in assigned, the next claimed");
    let done: Vec<_> = claimed.iter().map(|c| (c.job.id, c.lease_token, Vec::new())).collect();
    let refill = ClaimFor { worker_id: "w1", backends: &backends, models: None, limit: 2, lease: LEASE };
    let (completed, next) = store.complete_all(&done, Some(&refill)).await.unwrap();
    assert_eq!((completed.len(), next.len()), (2, 1), "both completed, and the last job refilled a slot");

    let client = store.pool().get().await.unwrap();
    let statements = client
        .query(
            "SELECT name, statement, cardinality(parameter_types) FROM pg_prepared_statements \
             WHERE statement LIKE '%jobs%' ORDER BY name",
            &[],
        )
        .await
        .unwrap();
    let kept = |sql: &str| statements.iter().any(|s| s.get::<_, String>(1).starts_with(sql));
    for start in ["WITH existing AS", "WITH heads AS", "WITH done AS"] {
        assert!(kept(start), "the connection keeps the statement starting {start:?}");
    }
    // The plan the connection keeps (its generic plan, as those statements run with it).
    client.batch_execute("SET plan_cache_mode = force_generic_plan").await.unwrap();
    let mut bad = Vec::new();
    for s in &statements {
        let (name, sql, params): (String, String, i32) = (s.get(0), s.get(1), s.get(2));
        let nulls = vec!["NULL"; usize::try_from(params).unwrap()].join(", ");
        let args = if nulls.is_empty() { String::new() } else { format!("({nulls})") };
        let explain = format!("EXPLAIN (FORMAT JSON) EXECUTE {name}{args}");
        let row = client.query_one(explain.as_str(), &[]).await.unwrap();
        let plan: Value = row.get(0);
        let mut found = Vec::new();
        // The submit also asks the line of owners whether anything of a backend waits:
        // a probe too, however long the line. (The claim reads the line in order, from its
        // start, as far as its limit.)
        let tables: &[&str] =
            if sql.starts_with("WITH existing AS") { &["jobs", "queue_heads"] } else { &["jobs"] };
        whole_reads(&plan[0]["Plan"], tables, &mut found);
        if !found.is_empty() {
            bad.push(format!("{found:?} in {}", &sql[..sql.len().min(120)]));
        }
    }
    client.batch_execute("RESET plan_cache_mode").await.unwrap();
    assert!(bad.is_empty(), "plans that read jobs whole:\n{}", bad.join("\n"));
}
