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
        var bytes: [UInt8]? { Data(base64Encoded: rgb).map { [UInt8]($0) } }
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

struct ParityResult: Equatable {
    var maxAbsDiff: Double
    var top1Agree: Int
    var total: Int
    var tolerance: Double?

    /// Every top-1 agrees and (no tolerance or max |diff| <= tolerance).
    var ok: Bool { top1Agree == total && (tolerance.map { maxAbsDiff <= $0 } ?? true) }
    var summary: String {
        "parity: max diff \(String(format: "%.2g", maxAbsDiff)), top-1 agree \(top1Agree)/\(total)" +
            (ok ? " (ok)" : top1Agree < total ? " (top-1 differs)" : " (over tolerance)")
    }
}

enum Parity {
    static func compare(expected: [[Float]], got: [[Float]], tolerance: Double?) -> ParityResult {
        var worst = 0.0, agree = 0
        for (e, g) in zip(expected, got) {
            for (a, b) in zip(e, g) { worst = max(worst, abs(Double(a) - Double(b))) }
            if Postprocess.topK(e, 1).first == Postprocess.topK(g, 1).first { agree += 1 }
        }
        return ParityResult(maxAbsDiff: worst, top1Agree: agree, total: expected.count, tolerance: tolerance)
    }

    /// Feed every parity image through `logitsOf` (the app's runtime) and compare with the stored logits.
    static func run(_ set: ParitySet, _ input: ModelMetadata.Input, logitsOf: ([Float]) throws -> [Float]) rethrows -> ParityResult {
        var got: [[Float]] = []
        for im in set.images {
            let img = RGBImage(width: set.width, height: set.height, rgb: im.bytes ?? [])
            got.append(try logitsOf(Preprocess.toInput(img, input, cropFraction: 1)))
        }
        return compare(expected: set.images.map(\.logits), got: got, tolerance: set.maxAbsDiffTol)
    }

    /// iOS lists Core ML artifacts (and ExecuTorch ones whose .json says iOS); older .json: Core ML only.
    static func runnableOnIOS(_ meta: ModelMetadata) -> Bool {
        if let r = meta.runtime { return r.platforms.contains("ios") && meta.target == "coreml" }
        return meta.target == "coreml"
    }
}
