import XCTest
@testable import MobileVMoEDemo

/// The same golden vectors the Kotlin JUnit tests reproduce (apps/golden/golden.json, added to this
/// target's resources by the Xcode project). Tolerance 1e-5, from the file.
final class GoldenTests: XCTestCase {
    private var golden: [String: Any] = [:]
    private var metas: [ModelMetadata] = []
    private var tol: Double = 1e-5

    override func setUpWithError() throws {
        let url = try XCTUnwrap(Bundle(for: GoldenTests.self).url(forResource: "golden", withExtension: "json"),
                                "golden.json is not in the test bundle")
        let data = try Data(contentsOf: url)
        golden = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        tol = try XCTUnwrap(golden["tolerance"] as? Double)
        let rawMetas = try XCTUnwrap(golden["metadata"] as? [[String: Any]])
        metas = try rawMetas.map { try ModelMetadata.parse(JSONSerialization.data(withJSONObject: $0)) }
    }

    private func list(_ key: String) throws -> [[String: Any]] { try XCTUnwrap(golden[key] as? [[String: Any]]) }
    private func doubles(_ d: [String: Any], _ key: String) throws -> [Double] {
        try XCTUnwrap(d[key] as? [NSNumber]).map(\.doubleValue)
    }

    func testPreprocessingMatchesNumpyReference() throws {
        var images: [String: RGBImage] = [:]
        for im in try list("images") {
            let w = try XCTUnwrap(im["width"] as? Int), h = try XCTUnwrap(im["height"] as? Int)
            let rgb = try doubles(im, "rgb").map { UInt8($0) }
            images[try XCTUnwrap(im["name"] as? String)] = RGBImage(width: w, height: h, rgb: rgb)
        }
        let cases = try list("preprocess")
        XCTAssertEqual(cases.count, 16)  // 3 metadata x 4 images + the light-on-dark one inverted
        for c in cases {
            let meta = metas[try XCTUnwrap(c["metadata"] as? Int)]
            let img = try XCTUnwrap(images[try XCTUnwrap(c["image"] as? String)])
            let crop = try doubles(c, "crop").map { Int($0) }
            XCTAssertEqual(Preprocess.centerCropBox(height: img.height, width: img.width, cropFraction: meta.cropFraction),
                           CropBox(top: crop[0], left: crop[1], side: crop[2]))
            let want = try doubles(c, "expected")
            let got = Preprocess.toInput(img, meta.input, cropFraction: meta.cropFraction,
                                         invert: try XCTUnwrap(c["invert"] as? Bool))
            XCTAssertEqual(want.count, got.count)
            let worst = zip(want, got).map { abs($0 - Double($1)) }.max() ?? 0
            XCTAssertLessThanOrEqual(worst, tol, "\(meta.artifact) / \(c["image"] ?? "")")
        }
    }

    func testSoftmaxTopKAndExpert() throws {
        for o in try list("outputs") {
            let logits = try doubles(o, "logits").map { Float($0) }
            let probs = Postprocess.softmax(logits)
            for (w, g) in zip(try doubles(o, "probs"), probs) { XCTAssertEqual(w, Double(g), accuracy: tol) }
            let p = Postprocess.decode(metas[0], logits: logits, expertProbs: try doubles(o, "expert_probs").map { Float($0) })
            XCTAssertEqual(p.top.map(\.index), try doubles(o, "top5").map { Int($0) })
            for (w, r) in zip(try doubles(o, "top5_probs"), p.top) { XCTAssertEqual(w, Double(r.prob), accuracy: tol) }
            XCTAssertEqual(p.expert, o["top_expert"] as? Int)
            XCTAssertEqual(p.superclass, o["superclass"] as? String)
        }
    }

    func testBenchmarkStatsMatchNumpy() throws {
        for b in try list("bench") {
            let s = BenchStats(try doubles(b, "runs_ms"))
            XCTAssertEqual(s.minMs, try XCTUnwrap(b["min_ms"] as? Double), accuracy: 1e-9)
            XCTAssertEqual(s.medianMs, try XCTUnwrap(b["median_ms"] as? Double), accuracy: 1e-9)
            XCTAssertEqual(s.p90Ms, try XCTUnwrap(b["p90_ms"] as? Double), accuracy: 1e-9)
            XCTAssertEqual(s.meanMs, try XCTUnwrap(b["mean_ms"] as? Double), accuracy: 1e-9)
        }
    }

    func testMetadataAndBenchmarkJSON() throws {
        XCTAssertEqual(metas[0].input.layout, .nhwc)
        XCTAssertTrue(metas[0].hasExpertProbs)
        XCTAssertEqual(metas[0].labels[3], "quote \"three\" \\ \u{e9}")
        XCTAssertTrue(metas[1].input.preprocessingBakedIn)
        XCTAssertNil(metas[2].superclasses)
        let bad = Data(#"{"model": "m", "target": "coreml", "precision": "fp32", "artifact": "a", "input": {"shape": [1, 3, 8, 8], "layout": "CHW", "mean": [0, 0, 0], "std": [1, 1, 1]}, "outputs": [], "labels": [], "experts": 0, "k": 0}"#.utf8)
        XCTAssertThrowsError(try ModelMetadata.parse(bad))

        let r = BenchmarkReport(artifact: "m_coreml_fp16.mlpackage", device: "iPhone16,1 (iOS 17.5)", computeUnits: "ane",
                                threads: nil, warmup: 3, runsMs: [2, 1], created: "2026-11-23T09:00:00Z")
        let obj = try XCTUnwrap(JSONSerialization.jsonObject(with: r.jsonData()) as? [String: Any])
        XCTAssertEqual(obj["format"] as? String, "mvmoe-app-benchmark")
        XCTAssertEqual(obj["runs_ms"] as? [Double], [2, 1])
        XCTAssertTrue(obj["threads"] is NSNull)
        XCTAssertEqual(r.fileName, "bench_m_coreml_fp16_coreml_ane.json")
        XCTAssertEqual(r.stats.medianMs, 1.5)
    }

    func testTailCacheLruByHand() throws {
        // capacity 2, images routed 0, 1, 0, 2, 1: loads 0, 1, then 2 evicts 1, then 1 evicts 0
        var now: UInt64 = 0
        var loaded: [Int] = []
        let cache = TailCache<Int>(capacity: 2, clock: { now }) { e in now += 3_000_000; loaded.append(e); return e * 10 }
        for e in [0, 1, 0, 2, 1] { XCTAssertEqual(try cache.get(e), e * 10) }
        XCTAssertEqual(loaded, [0, 1, 2, 1])
        XCTAssertEqual(cache.resident, [2, 1])
        XCTAssertEqual(cache.switchMs, [3, 3, 3, 3])
    }

    func testSplitProgramsParseAndValidate() throws {
        let json = """
        {"trunk": {"name": "trunk", "file": "m.mlpackage", "outputs": ["stream", "expert_index", "gate", "expert_probs"]},
         "tails": [{"expert": 0, "name": "tail_0", "file": "m.mlpackage", "inputs": ["stream", "gate"]}]}
        """
        let p = try JSONDecoder().decode(SplitPrograms.self, from: Data(json.utf8))
        try p.validate()
        XCTAssertEqual(try p.tail(0).name, "tail_0")
        XCTAssertThrowsError(try p.tail(3))
    }

    func testAntialiasTapsByHand() throws {
        // 4 -> 2: scale 2, support 2; weights (.75, .75, .25) and (.25, .75, .75), each / 1.75 (as the Kotlin test)
        let t = Preprocess.taps(out: 2, in: 4)
        XCTAssertEqual(t.start, [0, 1])
        for (got, want) in zip(t.weights[0] + t.weights[1], [0.75, 0.75, 0.25, 0.25, 0.75, 0.75].map { $0 / 1.75 }) {
            XCTAssertEqual(got, want, accuracy: 1e-12)
        }
    }

    func testParityToleranceExpertsAndRuntimeVersion() throws {
        XCTAssertEqual(Parity.tolerance(1e-3, accelerated: true), 5e-2)
        XCTAssertEqual(Parity.tolerance(1e-3, accelerated: false), 1e-3)
        XCTAssertNil(Parity.tolerance(nil, accelerated: true))
        let r = Parity.compare(expected: [[1, 2]], got: [[1, 2]], tolerance: 1e-3, expectedExperts: [[0.1, 0.9]], gotExperts: [[0.8, 0.2]])
        XCTAssertEqual(r.expertAgree, 0)
        XCTAssertFalse(r.ok)
        XCTAssertTrue(r.summary.hasSuffix("FAILED (expert differs)"), r.summary)
        XCTAssertEqual(Parity.compareVersions("18.0", "17.4.1"), 1)
        XCTAssertEqual(Parity.compareVersions("17.4", "17.4.0"), 0)
        var m = metas[0]
        m.target = "coreml"
        m.runtime = Runtime(name: "coreml", minVersion: "18.0", platforms: ["ios"])
        XCTAssertNotNil(Parity.runtimeProblem(m, iosVersion: "17.5"))
        XCTAssertNil(Parity.runtimeProblem(m, iosVersion: "18.1"))
    }
}
