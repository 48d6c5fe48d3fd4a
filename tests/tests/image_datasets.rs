#![allow(clippy::unwrap_used)]
//! Image datasets end to end: the three folder layouts, the stored images and records,
//! stats, thumbnails, splits, delete, progress and cancel, and every bad input leaving
//! the home unchanged. Images are made here (16x16 or smaller).

use crate::common;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use crate::common::dataset_dirs;
use anneal::{
    CancelToken, DatasetFormat, Event, EventSink, FinishStatus, Home, ImageImportOptions, ImageLayout, OnDuplicate,
    RecordingSink, SourceFormat,
};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use serde_json::Value;

fn home() -> (tempfile::TempDir, Home) {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("home")).unwrap();
    (d, h)
}

fn encoded(img: DynamicImage, fmt: ImageFormat) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, fmt).unwrap();
    out.into_inner()
}

fn solid(w: u32, h: u32, c: [u8; 3]) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_pixel(w, h, Rgb(c)))
}

fn png(w: u32, h: u32, c: [u8; 3]) -> Vec<u8> {
    encoded(solid(w, h, c), ImageFormat::Png)
}

fn put(dir: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

fn opts(name: &str) -> ImageImportOptions {
    ImageImportOptions { name: Some(name.into()), ..Default::default() }
}

fn records(h: &Home, name: &str) -> Vec<Value> {
    h.datasets().preview(name, 1000).unwrap()
}

#[test]
fn imagefolder_with_metadata_jsonl_and_subfolders() {
    let (d, h) = home();
    let dir = d.path().join("pets");
    put(&dir, "b/cat.png", &png(16, 16, [200, 0, 0]));
    put(&dir, "a/dog.jpg", &encoded(solid(16, 12, [0, 200, 0]), ImageFormat::Jpeg));
    put(&dir, "c.webp", &encoded(solid(12, 16, [0, 0, 200]), ImageFormat::WebP));
    let rgba = RgbaImage::from_pixel(8, 8, Rgba([0, 0, 0, 0]));
    put(&dir, "d.png", &encoded(DynamicImage::ImageRgba8(rgba), ImageFormat::Png));
    put(&dir, "README.md", b"not an image, ignored");
    put(
        &dir,
        "metadata.jsonl",
        br#"{"file_name": "b/cat.png", "text": "a red cat "}
{"file_name": "./a/dog.jpg", "text": "a green dog"}
{"file_name": "c.webp", "text": "a blue bird"}
{"file_name": "d.png", "text": ""}
"#,
    );
    let ds = h.datasets();
    let rec = ds.import_images(&dir, &ImageImportOptions::default()).unwrap();
    assert_eq!(rec.name, "pets");
    assert_eq!((rec.format, rec.source_format, rec.num_records), (DatasetFormat::Image, SourceFormat::Images, 4));
    assert_eq!(rec.columns["text"], "text");
    assert_eq!(rec.columns["image"], "file_name");
    let recs = records(&h, "pets");
    // Sorted by path; the stored name is the position and the real format.
    let got: Vec<(&str, &str, &str)> = recs
        .iter()
        .map(|r| (r["image"].as_str().unwrap(), r["file_name"].as_str().unwrap(), r["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("images/000001.jpg", "a/dog.jpg", "a green dog"),
            ("images/000002.png", "b/cat.png", "a red cat"),
            ("images/000003.webp", "c.webp", "a blue bird"),
            ("images/000004.png", "d.png", ""),
        ]
    );
    assert_eq!((recs[0]["width"].as_u64(), recs[0]["height"].as_u64()), (Some(16), Some(12)));
    assert_eq!(recs[3]["mode"], "RGBA");
    // The original bytes are stored, and the record carries their sha256.
    let stored = ds.image_path(&rec, &recs[1]).unwrap();
    assert_eq!(std::fs::read(&stored).unwrap(), std::fs::read(dir.join("b/cat.png")).unwrap());
    assert_eq!(stored.parent().unwrap().parent().unwrap(), rec.path.parent().unwrap());
    assert_eq!(recs[1]["sha256"].as_str().unwrap().len(), 64);

    let stats = ds.stats("pets").unwrap();
    let im = stats.images.unwrap();
    assert_eq!(im.count, 4);
    assert_eq!((im.width.min, im.width.max, im.height.min, im.height.max), (8, 16, 8, 16));
    assert_eq!(im.formats["png"], 2);
    assert_eq!(im.formats["jpeg"], 1);
    assert_eq!(im.modes["RGB"], 3);
    assert_eq!(im.aspect_ratios["1:1"], 2);
    assert_eq!(im.aspect_ratios["4:3"], 1);
    assert_eq!(im.aspect_ratios["3:4"], 1);
    assert_eq!(stats.fields["text"].empty, 1);

    let thumbs = ds.thumbnails("pets", 3, 8).unwrap();
    assert_eq!(thumbs.len(), 3);
    assert_eq!(thumbs[0].0, recs[0]);
    let t = image::load_from_memory_with_format(&thumbs[0].1, ImageFormat::Png).unwrap();
    assert_eq!((t.width(), t.height()), (8, 6));
    let px = t.to_rgb8().get_pixel(4, 3).0;
    assert!(px[1] > 150 && px[0] < 50, "{px:?}");
    assert_eq!(ds.thumbnails("pets", 1, 0).unwrap_err().code(), "invalid_config");

    // The same folder again: the same content address.
    let e = ds.import_images(&dir, &opts("again")).unwrap_err();
    assert_eq!(e.code(), "duplicate_content");
    let reused = ds.import_images(&dir, &ImageImportOptions { on_duplicate: OnDuplicate::Reuse, ..opts("again") });
    assert_eq!(reused.unwrap().id, rec.id);
    // A changed caption is another dataset.
    put(
        &dir,
        "metadata.jsonl",
        br#"{"file_name": "b/cat.png", "text": "a red cat"}
{"file_name": "a/dog.jpg", "text": "a green dog!"}
{"file_name": "c.webp", "text": "a blue bird"}
{"file_name": "d.png", "text": ""}
"#,
    );
    let other = ds.import_images(&dir, &opts("changed")).unwrap();
    assert_ne!(other.sha256, rec.sha256);
}

#[test]
fn imagefolder_csv_with_caption_column() {
    let (d, h) = home();
    let dir = d.path().join("csvset");
    put(&dir, "x.png", &png(4, 4, [1, 2, 3]));
    put(&dir, "y.png", &png(4, 4, [3, 2, 1]));
    put(&dir, "metadata.csv", b"file_name,caption,other\ny.png,\"second, with comma\",1\nx.png,first,2\n");
    let o = ImageImportOptions { caption_column: "caption".into(), ..opts("csvset") };
    let rec = h.datasets().import_images(&dir, &o).unwrap();
    assert_eq!(rec.columns["text"], "caption");
    let texts: Vec<String> = records(&h, "csvset").iter().map(|r| r["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(texts, vec!["first", "second, with comma"]);
    // The default caption column is `text`, which this file lacks.
    let e = h.datasets().import_images(&dir, &opts("nocol")).unwrap_err();
    assert_eq!(e.code(), "invalid_data");
    let s = e.to_string();
    assert!(s.contains("metadata.csv") && s.contains("record 2") && s.contains("`text`"), "{s}");
}

#[test]
fn sidecar_captions_and_instance_sets() {
    let (d, h) = home();
    let ds = h.datasets();
    let dir = d.path().join("kohya");
    put(&dir, "1.png", &png(8, 8, [9, 9, 9]));
    put(&dir, "1.txt", "\u{feff}a photo, of a thing\n".as_bytes());
    put(&dir, "2.jpeg", &encoded(solid(8, 8, [50, 50, 50]), ImageFormat::Jpeg));
    put(&dir, "2.txt", b"second");
    ds.import_images(&dir, &opts("kohya")).unwrap();
    let texts: Vec<Value> = records(&h, "kohya").iter().map(|r| r["text"].clone()).collect();
    assert_eq!(texts, vec!["a photo, of a thing", "second"]);
    assert_eq!(records(&h, "kohya")[1]["image"], "images/000002.jpg");

    // An image without its caption: refused, unless an instance prompt fills in.
    put(&dir, "3.png", &png(8, 8, [1, 1, 1]));
    let e = ds.import_images(&dir, &opts("k2")).unwrap_err();
    assert_eq!(e.code(), "invalid_data");
    assert!(e.to_string().contains("3.png") && e.to_string().contains("3.txt"), "{e}");
    let o = ImageImportOptions { instance_prompt: Some("a thing".into()), ..opts("k2") };
    ds.import_images(&dir, &o).unwrap();
    assert_eq!(records(&h, "k2")[2]["text"], "a thing");
    // Another caption extension.
    let dir2 = d.path().join("caps");
    put(&dir2, "a.png", &png(8, 8, [1, 1, 1]));
    put(&dir2, "a.caption", b"cap");
    let o = ImageImportOptions { caption_extension: ".caption".into(), ..opts("caps") };
    ds.import_images(&dir2, &o).unwrap();
    assert_eq!(records(&h, "caps")[0]["text"], "cap");

    // DreamBooth instance set.
    let inst = d.path().join("sks");
    for i in 0..3u8 {
        put(&inst, &format!("img{i}.png"), &png(8, 8, [i * 40, 10, 10]));
    }
    let e = ds.import_images(&inst, &opts("sks")).unwrap_err();
    assert_eq!(e.code(), "invalid_config");
    assert!(e.to_string().contains("instance_prompt"), "{e}");
    let o = ImageImportOptions { instance_prompt: Some("a photo of sks dog".into()), ..opts("sks") };
    let rec = ds.import_images(&inst, &o).unwrap();
    assert_eq!(rec.num_records, 3);
    assert!(records(&h, "sks").iter().all(|r| r["text"] == "a photo of sks dog"));
    // A forced layout: the same folder with a caption file, as an instance set.
    put(&inst, "img0.txt", b"ignored");
    let o = ImageImportOptions {
        layout: Some(ImageLayout::Instance),
        instance_prompt: Some("a photo of sks dog".into()),
        on_duplicate: OnDuplicate::Reuse,
        ..opts("sks2")
    };
    assert_eq!(ds.import_images(&inst, &o).unwrap().id, rec.id);
}

#[test]
fn split_halves_hold_their_images_and_delete_removes_them() {
    let (d, h) = home();
    let ds = h.datasets();
    let dir = d.path().join("six");
    for i in 0..6u8 {
        put(&dir, &format!("{i}.png"), &png(6, 6, [i * 30, 0, 0]));
        put(&dir, &format!("{i}.txt"), format!("image {i}").as_bytes());
    }
    let src = ds.import_images(&dir, &opts("six")).unwrap();
    let split = ds.split("six", 0.34, 7, None).unwrap();
    assert_eq!(split.train.num_records + split.val.num_records, 6);
    assert_eq!(split.val.format, DatasetFormat::Image);
    assert!(ds.stats(split.val.id.clone()).unwrap().images.is_some());
    for half in [&split.train, &split.val] {
        let recs = ds.preview(half.id.clone(), 100).unwrap();
        let dir_entries = std::fs::read_dir(half.path.parent().unwrap().join("images")).unwrap().count();
        assert_eq!(dir_entries, recs.len());
        for r in &recs {
            let p = ds.image_path(half, r).unwrap();
            assert!(p.starts_with(half.path.parent().unwrap()));
            assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(ds.image_path(&src, r).unwrap()).unwrap());
        }
        assert_eq!(ds.thumbnails(half.id.clone(), 10, 4).unwrap().len(), recs.len());
    }
    // Deleting the source leaves the halves whole.
    ds.delete("six", false).unwrap();
    assert!(!src.path.parent().unwrap().exists());
    let r = &ds.preview(split.train.id.clone(), 1).unwrap()[0];
    assert!(ds.image_path(&split.train, r).unwrap().is_file());
    ds.delete(split.train.id.clone(), false).unwrap();
    ds.delete(split.val.id.clone(), false).unwrap();
    assert!(dataset_dirs(&h).is_empty(), "{:?}", dataset_dirs(&h));
}

#[test]
fn image_path_refuses_paths_leaving_the_dataset() {
    let (d, h) = home();
    let dir = d.path().join("one");
    put(&dir, "a.png", &png(2, 2, [0, 0, 0]));
    let o = ImageImportOptions { instance_prompt: Some(String::new()), ..opts("one") };
    let rec = h.datasets().import_images(&dir, &o).unwrap();
    for bad in [
        serde_json::json!({"image": "../x.png"}),
        serde_json::json!({"image": "/etc/passwd"}),
        serde_json::json!({"image": 3}),
        serde_json::json!({}),
    ] {
        let e = h.datasets().image_path(&rec, &bad).unwrap_err();
        assert_eq!(e.code(), "invalid_data", "{bad}");
    }
    // Thumbnails are for image datasets only.
    let t = common::write(d.path(), "t.jsonl", b"{\"text\": \"x\"}\n");
    h.datasets().import_file(&t, &Default::default()).unwrap();
    assert_eq!(h.datasets().thumbnails("t", 1, 8).unwrap_err().code(), "invalid_config");
}

#[test]
fn progress_per_image_and_cancel_leave_nothing() {
    let (d, h) = home();
    let dir = d.path().join("prog");
    for i in 0..4u8 {
        put(&dir, &format!("{i}.png"), &png(4, 4, [i, i, i]));
    }
    let o = ImageImportOptions { instance_prompt: Some("x".into()), ..opts("prog") };
    let rec = RecordingSink::new();
    let mut s = rec.clone();
    h.datasets().import_images_with(&dir, &o, &mut s, &CancelToken::new()).unwrap();
    let ev = rec.events();
    assert!(
        matches!(&ev[0], Event::TaskStarted { task, total: Some(4), unit, .. } if task == "import_dataset" && unit == "images")
    );
    let done: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            Event::TaskProgress { done, .. } => Some(*done),
            _ => None,
        })
        .collect();
    assert_eq!(done, vec![1, 2, 3, 4]);
    assert!(matches!(ev.last(), Some(Event::TaskFinished { status: FinishStatus::Completed, id: Some(_), .. })));

    // Cancelled after the first image: nothing stored.
    let before = dataset_dirs(&h);
    let cancel = CancelToken::new();
    let c2 = cancel.clone();
    let rec = RecordingSink::new();
    let mut rec2 = rec.clone();
    let mut sink = move |e: &Event| {
        if matches!(e, Event::TaskProgress { .. }) {
            c2.cancel();
        }
        rec2.on_event(e)
    };
    let o = ImageImportOptions { instance_prompt: Some("y".into()), ..opts("cancelled") };
    let e = h.datasets().import_images_with(&dir, &o, &mut sink, &cancel).unwrap_err();
    assert_eq!(e.code(), "cancelled");
    assert_eq!(rec.events().iter().filter(|e| matches!(e, Event::TaskProgress { .. })).count(), 1);
    assert!(matches!(rec.events().last(), Some(Event::TaskFinished { status: FinishStatus::Cancelled, .. })));
    assert_eq!(h.datasets().list().unwrap().len(), 1);
    assert_eq!(dataset_dirs(&h), before);
}

/// A PNG header claiming `w x h` pixels, in a file of under 100 bytes.
fn huge_png_header(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Each bad folder: a typed error naming the file, and the home unchanged.
#[test]
fn bad_inputs_are_typed_name_the_file_and_leave_nothing() {
    let (d, h) = home();
    let ds = h.datasets();
    let ok = d.path().join("ok");
    put(&ok, "a.png", &png(4, 4, [1, 1, 1]));
    ds.import_images(&ok, &ImageImportOptions { instance_prompt: Some("x".into()), ..opts("taken") }).unwrap();
    let before_list = ds.list().unwrap();
    let before_dirs = dataset_dirs(&h);

    let good = png(16, 16, [10, 20, 30]);
    let mut corrupt = good.clone();
    let n = corrupt.len();
    for b in &mut corrupt[40..n - 12] {
        *b = !*b;
    }
    let grad = DynamicImage::ImageRgb8(RgbImage::from_fn(16, 16, |x, y| Rgb([x as u8 * 16, y as u8 * 16, 77])));
    let jpg = encoded(grad, ImageFormat::Jpeg);
    let truncated_jpg = jpg[..jpg.len() * 9 / 10].to_vec();
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x00\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;".to_vec();
    let bmp = b"BM:\x00\x00\x00\x00\x00\x00\x006\x00\x00\x00(\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01\x00\x18\x00\x00\x00\x00\x00\x04\x00\x00\x00\x13\x0b\x00\x00\x13\x0b\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\x00".to_vec();

    type Setup = Box<dyn Fn(&Path)>;
    let inst = |p: &str| ImageImportOptions { instance_prompt: Some(p.into()), ..opts("new") };
    let cases: Vec<(&str, Setup, ImageImportOptions, &str, Vec<&str>)> = vec![
        (
            "corrupt PNG",
            Box::new({
                let c = corrupt.clone();
                let g = good.clone();
                move |d: &Path| {
                    put(d, "a.png", &g);
                    put(d, "b.png", &c);
                }
            }),
            inst("x"),
            "invalid_data",
            vec!["b.png", "PNG"],
        ),
        (
            "truncated JPEG",
            Box::new({
                let t = truncated_jpg.clone();
                move |d: &Path| {
                    put(d, "t.jpg", &t);
                }
            }),
            inst("x"),
            "invalid_data",
            vec!["t.jpg", "JPEG"],
        ),
        (
            "a GIF named .png",
            Box::new({
                let g = gif.clone();
                move |d: &Path| {
                    put(d, "anim.png", &g);
                }
            }),
            inst("x"),
            "invalid_data",
            vec!["anim.png", "GIF"],
        ),
        (
            "a BMP named .png",
            Box::new({
                let b = bmp.clone();
                move |d: &Path| {
                    put(d, "pic.png", &b);
                }
            }),
            inst("x"),
            "invalid_data",
            vec!["pic.png", "BMP"],
        ),
        (
            "a .gif file",
            Box::new({
                let g = gif.clone();
                move |d: &Path| {
                    put(d, "real.gif", &g);
                }
            }),
            inst("x"),
            "invalid_data",
            vec!["real.gif", "GIF"],
        ),
        (
            "text named .png",
            Box::new(|d: &Path| {
                put(d, "notes.png", b"hello");
            }),
            inst("x"),
            "invalid_data",
            vec!["notes.png", "not an image"],
        ),
        (
            "caption file without its image",
            Box::new({
                let g = good.clone();
                move |d: &Path| {
                    put(d, "a.png", &g);
                    put(d, "a.txt", b"ok");
                    put(d, "orphan.txt", b"lonely");
                }
            }),
            opts("new"),
            "invalid_data",
            vec!["orphan.txt", "without its image"],
        ),
        (
            "metadata row naming a missing file",
            Box::new({
                let g = good.clone();
                move |d: &Path| {
                    put(d, "a.png", &g);
                    put(d, "metadata.jsonl", b"{\"file_name\": \"a.png\", \"text\": \"a\"}\n{\"file_name\": \"gone.png\", \"text\": \"b\"}\n");
                }
            }),
            opts("new"),
            "invalid_data",
            vec!["metadata.jsonl", "record 2", "gone.png", "file_name"],
        ),
        (
            "metadata row leaving the folder",
            Box::new({
                let g = good.clone();
                move |d: &Path| {
                    put(d, "a.png", &g);
                    put(d, "metadata.jsonl", b"{\"file_name\": \"../a.png\", \"text\": \"a\"}\n");
                }
            }),
            opts("new"),
            "invalid_data",
            vec!["metadata.jsonl", "record 1", ".."],
        ),
        (
            "image without a metadata row",
            Box::new({
                let g = good.clone();
                move |d: &Path| {
                    put(d, "a.png", &g);
                    put(d, "b.png", &g);
                    put(d, "metadata.jsonl", b"{\"file_name\": \"a.png\", \"text\": \"a\"}\n");
                }
            }),
            opts("new"),
            "invalid_data",
            vec!["b.png", "no row"],
        ),
        (
            "100-megapixel PNG header",
            Box::new(|d: &Path| {
                put(d, "huge.png", &huge_png_header(10_000, 10_000));
            }),
            inst("x"),
            "invalid_data",
            vec!["huge.png", "10000x10000", "max_pixels", "refused"],
        ),
        (
            "over max_image_bytes",
            Box::new({
                let g = good.clone();
                move |d: &Path| {
                    put(d, "a.png", &g);
                }
            }),
            ImageImportOptions { max_image_bytes: 10, ..inst("x") },
            "invalid_data",
            vec!["a.png", "larger than 10 bytes"],
        ),
        (
            "a FIFO named x.png",
            Box::new({
                let g = good.clone();
                move |d: &Path| {
                    put(d, "a.png", &g);
                    assert!(std::process::Command::new("mkfifo").arg(d.join("x.png")).status().unwrap().success());
                }
            }),
            inst("x"),
            "invalid_data",
            vec!["x.png", "regular file"],
        ),
        (
            "zero images",
            Box::new(|d: &Path| {
                put(d, "readme.md", b"nothing");
            }),
            inst("x"),
            "invalid_data",
            vec!["no images"],
        ),
        (
            "name taken",
            Box::new({
                let g = good.clone();
                move |d: &Path| {
                    put(d, "z.png", &g);
                }
            }),
            ImageImportOptions { instance_prompt: Some("x".into()), ..opts("taken") },
            "already_exists",
            vec!["taken"],
        ),
        (
            "bad caption extension",
            Box::new({
                let g = good.clone();
                move |d: &Path| {
                    put(d, "z.png", &g);
                }
            }),
            ImageImportOptions { caption_extension: "txt".into(), ..inst("x") },
            "invalid_config",
            vec!["caption_extension"],
        ),
    ];
    for (i, (what, setup, o, code, must)) in cases.into_iter().enumerate() {
        let dir = d.path().join(format!("case{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        setup(&dir);
        let e = ds.import_images(&dir, &o).unwrap_err();
        let msg = e.to_string();
        assert_eq!(e.code(), code, "{what}: {msg}");
        for s in &must {
            assert!(msg.contains(s), "{what}: `{s}` not in: {msg}");
        }
        assert_eq!(ds.list().unwrap(), before_list, "{what}");
        assert_eq!(dataset_dirs(&h), before_dirs, "{what}");
    }
    // Not a folder, and a missing one.
    let f = put(d.path(), "file.png", &good);
    assert_eq!(ds.import_images(&f, &opts("f")).unwrap_err().code(), "invalid_config");
    assert_eq!(ds.import_images(d.path().join("nope"), &opts("f")).unwrap_err().code(), "file_not_found");
    assert_eq!(ds.list().unwrap(), before_list);
    assert_eq!(dataset_dirs(&h), before_dirs);
}
