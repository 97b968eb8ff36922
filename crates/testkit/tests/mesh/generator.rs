//! The built-in backend through the whole mesh: deterministic bytes, batches, video, and
//! slots running jobs at once.

use sakuga_proto::v1::{JobKind, JobSpec, JobStatus, SubmitJobRequest};

use crate::common::{Mesh, image_request};

fn nanos(t: &prost_types::Timestamp) -> i128 {
    i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos)
}

#[tokio::test]
async fn the_same_request_gives_the_same_bytes_and_another_seed_does_not() {
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut bytes = Vec::new();
    for seed in [7, 7, 8] {
        let mut req = image_request("lanterns over a river", 4);
        req.spec.as_mut().unwrap().seed = Some(seed);
        let id = jobs.submit_job(req).await.unwrap().into_inner().job.unwrap().id;
        let job = mesh.finished(&alice.token, &id).await;
        assert_eq!(job.status, i32::from(JobStatus::Succeeded), "{job:?}");
        bytes.push(mesh.read_file(&alice.token, &job.file_ids[0]).await);
    }
    assert_eq!(bytes[0], bytes[1], "same request, same seed: byte-identical PNGs");
    assert_ne!(bytes[0], bytes[2], "another seed: other bytes");
    mesh.stop().await;
}

#[tokio::test]
async fn a_batch_gives_distinct_files_and_a_video_job_one_animation_with_its_frames_and_fps() {
    let mesh = Mesh::start().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut batch = image_request("four cats on a roof", 2);
    batch.spec.as_mut().unwrap().batch_size = 4;
    let id = jobs.submit_job(batch).await.unwrap().into_inner().job.unwrap().id;
    let job = mesh.finished(&alice.token, &id).await;
    assert_eq!(job.status, i32::from(JobStatus::Succeeded), "{job:?}");
    assert_eq!(job.file_ids.len(), 4);
    let mut seen = std::collections::HashSet::new();
    for f in &job.file_ids {
        assert!(seen.insert(mesh.read_file(&alice.token, f).await), "every item of the batch differs");
    }

    let video = SubmitJobRequest {
        spec: Some(JobSpec {
            kind: JobKind::Video.into(),
            prompt: "petals falling".into(),
            width: 64,
            height: 64,
            steps: 2,
            frames: 6,
            fps: 12,
            seed: Some(3),
            ..JobSpec::default()
        }),
        ..SubmitJobRequest::default()
    };
    let id = jobs.submit_job(video).await.unwrap().into_inner().job.unwrap().id;
    let job = mesh.finished(&alice.token, &id).await;
    assert_eq!(job.status, i32::from(JobStatus::Succeeded), "{job:?}");
    assert_eq!(job.file_ids.len(), 1);
    let bytes = mesh.read_file(&alice.token, &job.file_ids[0]).await;
    // Decode the animation: acTL says how many frames, every fcTL says how long each shows.
    let mut decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let actl = reader.info().animation_control.unwrap();
    assert_eq!(actl.num_frames, 6);
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let mut frames = 0;
    while reader.next_frame(&mut buf).is_ok() {
        let fc = reader.info().frame_control.unwrap();
        assert_eq!((fc.delay_num, fc.delay_den), (1, 12), "each frame shows 1/12 s: 12 fps");
        frames += 1;
    }
    assert_eq!(frames, 6, "six frames decoded");
    mesh.stop().await;
}

#[tokio::test]
async fn with_two_slots_two_jobs_run_at_once() {
    let mut mesh = Mesh::without_generator().await;
    let alice = mesh.person("alice").await;
    let mut jobs = mesh.jobs(&alice.token);
    let mut ids = Vec::new();
    for seed in [1, 2] {
        let mut req = image_request("two at once", 40);
        let spec = req.spec.as_mut().unwrap();
        (spec.width, spec.height, spec.seed) = (256, 256, Some(seed));
        ids.push(jobs.submit_job(req).await.unwrap().into_inner().job.unwrap().id);
    }
    mesh.attach_generator_with(|c| c.slots = 2).await;
    let a = mesh.finished(&alice.token, &ids[0]).await;
    let b = mesh.finished(&alice.token, &ids[1]).await;
    for j in [&a, &b] {
        assert_eq!(j.status, i32::from(JobStatus::Succeeded), "{j:?}");
    }
    let span = |j: &sakuga_proto::v1::Job| {
        (nanos(j.start_time.as_ref().unwrap()), nanos(j.finish_time.as_ref().unwrap()))
    };
    let ((a0, a1), (b0, b1)) = (span(&a), span(&b));
    assert!(a0 < b1 && b0 < a1, "the two jobs' running times overlap: {a0}..{a1} and {b0}..{b1}");
    mesh.stop().await;
}
