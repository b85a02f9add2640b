import Foundation

/// The .json keys the exporter adds for the apps (docs/apps.md, "Metadata for the apps") and the
/// parity-set check, the same logic as the Kotlin `Parity` / `Artifacts`.
struct Preprocessing: Decodable, Equatable {
    var cropFraction: Double
    var polarity: String?

    enum CodingKeys: String, CodingKey {
        case polarity
        case cropFraction = "crop_fraction"
    }
}

struct Runtime: Decodable, Equatable {
    var name: String
    var minVersion: String?
    var platforms: [String]

    enum CodingKeys: String, CodingKey {
        case name, platforms
        case minVersion = "min_version"
    }
}

struct ArtifactFile: Decodable, Equatable {
    var bytes: Int
    var sha256: String
}

struct ParitySet: Decodable, Equatable {
    struct Image: Decodable, Equatable {
        var rgb: String  // base64 of H x W x 3 bytes, row-major
        var label: Int?
        var logits: [Float]
        var expertProbs: [Float]?
        var bytes: [UInt8]? { Data(base64Encoded: rgb).map { [UInt8]($0) } }

        enum CodingKeys: String, CodingKey {
            case rgb, label, logits
            case expertProbs = "expert_probs"
        }
    }

    var encoding: String
    var height: Int
    var width: Int
    var maxAbsDiffTol: Double?
    var images: [Image]

    enum CodingKeys: String, CodingKey {
        case encoding, height, width, images
        case maxAbsDiffTol = "max_abs_diff_tol"
    }
}

/// The bundled sample at full size (`sample_check`): the bytes' SHA-256 as the exporter decoded them and
/// PyTorch's logits after the app preprocessing (crop, antialiased resize, normalisation).
struct SampleCheck: Decodable, Equatable {
    var image: String
    var width: Int
    var height: Int
    var rgbSha256: String
    var logits: [Float]
    var maxAbsDiffTol: Double?

    enum CodingKeys: String, CodingKey {
        case image, width, height, logits
        case rgbSha256 = "rgb_sha256"
        case maxAbsDiffTol = "max_abs_diff_tol"
    }
}

struct ParityResult: Equatable {
    var maxAbsDiff: Double
    var top1Agree: Int
    var total: Int
    var tolerance: Double?
    /// Images whose chosen expert (argmax of expert_probs) agrees, of `expertTotal` compared; nil: none compared.
    var expertAgree: Int? = nil
    var expertTotal: Int = 0

    /// Every top-1 and every compared expert agrees, and (no tolerance or max |diff| <= tolerance).
    var ok: Bool {
        top1Agree == total && (expertAgree.map { $0 == expertTotal } ?? true) && (tolerance.map { maxAbsDiff <= $0 } ?? true)
    }
    var summary: String {
        "parity: max diff \(String(format: "%.2g", maxAbsDiff)), top-1 agree \(top1Agree)/\(total)" +
            (expertAgree.map { ", expert agree \($0)/\(expertTotal)" } ?? "") +
            (ok ? " (ok)" : top1Agree < total ? " FAILED (top-1 differs)"
                : (expertAgree ?? expertTotal) < expertTotal ? " FAILED (expert differs)" : " FAILED (over tolerance)")
    }
}

enum Parity {
    /// Core ML off the CPU (GPU, Neural Engine) may compute in fp16: an fp32 tolerance widens to fp16's.
    static let halfTolerance = 5e-2

    static func tolerance(_ stored: Double?, accelerated: Bool) -> Double? {
        guard let stored, accelerated else { return stored }
        return max(stored, halfTolerance)
    }

    static func compare(expected: [[Float]], got: [[Float]], tolerance: Double?,
                        expectedExperts: [[Float]?] = [], gotExperts: [[Float]?] = []) -> ParityResult {
        var worst = 0.0, agree = 0
        for (e, g) in zip(expected, got) {
            for (a, b) in zip(e, g) { worst = max(worst, abs(Double(a) - Double(b))) }
            if Postprocess.topK(e, 1).first == Postprocess.topK(g, 1).first { agree += 1 }
        }
        let pairs = zip(expectedExperts, gotExperts).compactMap { pair -> ([Float], [Float])? in
            guard let e = pair.0, let g = pair.1 else { return nil }
            return (e, g)
        }
        let experts = pairs.filter { Postprocess.topK($0.0, 1).first == Postprocess.topK($0.1, 1).first }.count
        return ParityResult(maxAbsDiff: worst, top1Agree: agree, total: expected.count, tolerance: tolerance,
                            expertAgree: pairs.isEmpty ? nil : experts, expertTotal: pairs.count)
    }

    /// Feed every parity image through `logitsOf` (the app's runtime) and compare with the stored logits.
    static func run(_ set: ParitySet, _ input: ModelMetadata.Input, logitsOf: ([Float]) throws -> [Float]) rethrows -> ParityResult {
        try runWithExperts(set, input, accelerated: false) { (try logitsOf($0), nil) }
    }

    /// As `run`, with the router's expert probabilities (`outputsOf` gives logits and expert_probs or nil)
    /// and the tolerance widened when the model may run off the CPU (`accelerated`).
    static func runWithExperts(_ set: ParitySet, _ input: ModelMetadata.Input, accelerated: Bool,
                               outputsOf: ([Float]) throws -> ([Float], [Float]?)) rethrows -> ParityResult {
        var got: [([Float], [Float]?)] = []
        for im in set.images {
            let img = RGBImage(width: set.width, height: set.height, rgb: im.bytes ?? [])
            got.append(try outputsOf(Preprocess.toInput(img, input, cropFraction: 1)))
        }
        return compare(expected: set.images.map(\.logits), got: got.map(\.0), tolerance: tolerance(set.maxAbsDiffTol, accelerated: accelerated),
                       expectedExperts: set.images.map(\.expertProbs), gotExperts: got.map(\.1))
    }

    /// The sample check: the app's own preprocessing of `image` (full size) against the exporter's.
    /// `sha256` hashes the decoded bytes (CryptoKit on the app side, so this file stays Foundation-only).
    static func sample(_ check: SampleCheck, image: RGBImage, sha256: String, input: ModelMetadata.Input, cropFraction: Double,
                       accelerated: Bool, logitsOf: ([Float]) throws -> [Float]) rethrows -> String {
        guard image.width == check.width, image.height == check.height, sha256 == check.rgbSha256 else {
            return "sample: the bundled \(check.image) decodes to other pixels than the exporter read: not compared"
        }
        let got = try logitsOf(Preprocess.toInput(image, input, cropFraction: cropFraction))
        let r = compare(expected: [check.logits], got: [got], tolerance: tolerance(check.maxAbsDiffTol, accelerated: accelerated))
        let same5 = Postprocess.topK(check.logits, 5) == Postprocess.topK(got, 5)
        return "sample \(check.width)x\(check.height) through the app preprocessing: max diff \(String(format: "%.2g", r.maxAbsDiff)), " +
            (same5 ? "same top-5" : "top-5 differs") + (r.ok && same5 ? " (ok)" : " FAILED")
    }

    /// Compare dotted versions numerically ("18.0" > "17.4.1"); a missing part counts as 0, a suffix is ignored.
    static func compareVersions(_ a: String, _ b: String) -> Int {
        func parts(_ v: String) -> [Int] { v.split(separator: ".").map { Int($0.prefix { $0.isNumber }) ?? 0 } }
        let pa = parts(a), pb = parts(b)
        for i in 0..<max(pa.count, pb.count) {
            let x = i < pa.count ? pa[i] : 0, y = i < pb.count ? pb[i] : 0
            if x != y { return x < y ? -1 : 1 }
        }
        return 0
    }

    /// Nil when this iOS (e.g. "17.5") meets the .json's runtime.min_version, else what to do.
    static func runtimeProblem(_ meta: ModelMetadata, iosVersion: String) -> String? {
        guard let min = meta.runtime?.minVersion, meta.target == "coreml" else { return nil }
        if compareVersions(iosVersion, min) >= 0 { return nil }
        return "\(meta.artifact) needs iOS \(min) (this phone runs iOS \(iosVersion))"
    }

    /// iOS lists Core ML artifacts (and ExecuTorch ones whose .json says iOS); older .json: Core ML only.
    static func runnableOnIOS(_ meta: ModelMetadata) -> Bool {
        if let r = meta.runtime { return r.platforms.contains("ios") && meta.target == "coreml" }
        return meta.target == "coreml"
    }
}
