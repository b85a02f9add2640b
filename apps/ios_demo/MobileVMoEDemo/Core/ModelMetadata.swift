import Foundation

/// The metadata .json that `mvmoe export` writes beside every artifact (docs/apps.md).
///
/// Only the keys the app needs are decoded; unknown keys are ignored so newer exporters stay readable.
/// `validate()` turns a malformed file into a message the app shows instead of crashing.
struct ModelMetadata: Decodable, Equatable {
    enum Layout: String, Decodable { case nchw = "NCHW", nhwc = "NHWC" }

    struct Input: Decodable, Equatable {
        var name: String
        var shape: [Int]
        var layout: Layout
        var dtype: String
        var mean: [Float]
        var std: [Float]
        var scale: Float
        var preprocessingBakedIn: Bool
        var resize: String

        enum CodingKeys: String, CodingKey {
            case name, shape, layout, dtype, mean, std, scale, resize
            case preprocessingBakedIn = "preprocessing_baked_in"
        }

        init(from decoder: Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decodeIfPresent(String.self, forKey: .name) ?? "image"
            shape = try c.decode([Int].self, forKey: .shape)
            layout = try c.decode(Layout.self, forKey: .layout)
            dtype = try c.decodeIfPresent(String.self, forKey: .dtype) ?? "float32"
            mean = try c.decode([Float].self, forKey: .mean)
            std = try c.decode([Float].self, forKey: .std)
            scale = try c.decodeIfPresent(Float.self, forKey: .scale) ?? 255
            preprocessingBakedIn = try c.decodeIfPresent(Bool.self, forKey: .preprocessingBakedIn) ?? false
            resize = try c.decodeIfPresent(String.self, forKey: .resize) ?? "center-crop-then-bilinear"
        }

        /// Model input height and width, read from the shape in the declared layout.
        var height: Int { layout == .nchw ? shape[2] : shape[1] }
        var width: Int { layout == .nchw ? shape[3] : shape[2] }
        var channels: Int { layout == .nchw ? shape[1] : shape[3] }
    }

    struct Output: Decodable, Equatable {
        var name: String
        var shape: [Int]
    }

    struct Superclasses: Decodable, Equatable {
        var names: [String]
        var classToSuperclass: [Int]

        enum CodingKeys: String, CodingKey {
            case names
            case classToSuperclass = "class_to_superclass"
        }
    }

    var model: String
    var target: String
    var backend: String?
    var precision: String
    var artifact: String
    var input: Input
    var outputs: [Output]
    var labels: [String]
    var superclasses: Superclasses?
    var experts: Int
    var k: Int
    var macs: Int?
    // Added for the apps (docs/apps.md, "Metadata for the apps"); absent in older .json files.
    var preprocessing: Preprocessing?
    var paritySet: ParitySet?
    var runtime: Runtime?
    var artifactFile: ArtifactFile?
    /// Split artifacts (`--experts split`): the trunk and tail functions; nil for one stacked program.
    var programs: SplitPrograms?
    /// The bundled sample at full size with PyTorch's outputs after the app preprocessing.
    var sampleCheck: SampleCheck?
    /// SHA-256 of the checkpoint the artifact came from; the benchmark file carries it.
    var checkpointSha256: String?

    enum CodingKeys: String, CodingKey {
        case model, target, backend, precision, artifact, input, outputs, labels, superclasses, experts, k, macs
        case preprocessing, runtime, programs
        case paritySet = "parity_set"
        case artifactFile = "artifact_file"
        case sampleCheck = "sample_check"
        case checkpointSha256 = "checkpoint_sha256"
    }

    /// Side of the centred square = round(min(H0, W0) * cropFraction); 1 = the largest square.
    var cropFraction: Double { preprocessing?.cropFraction ?? 1 }
    /// Position of the output called `name` in the artifact's output order, or nil.
    func outputIndex(_ name: String) -> Int? { outputs.firstIndex { $0.name == name } }

    /// True when the artifact has the router's `expert_probs` output (per-image MoE).
    var hasExpertProbs: Bool { experts > 0 && outputs.contains { $0.name == "expert_probs" } }

    struct Invalid: LocalizedError {
        var message: String
        var errorDescription: String? { message }
    }

    /// Decode and validate; errors name the key and the bad value.
    static func parse(_ data: Data) throws -> ModelMetadata {
        let meta: ModelMetadata
        do {
            meta = try JSONDecoder().decode(ModelMetadata.self, from: data)
        } catch let DecodingError.keyNotFound(key, ctx) {
            throw Invalid(message: "metadata: missing '\(pathString(ctx.codingPath + [key]))'")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw Invalid(message: "metadata: bad value at '\(pathString(ctx.codingPath))'")
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw Invalid(message: "metadata: null at '\(pathString(ctx.codingPath))'")
        } catch let DecodingError.dataCorrupted(ctx) {
            throw Invalid(message: "metadata: \(ctx.debugDescription) at '\(pathString(ctx.codingPath))'")
        }
        try meta.validate()
        return meta
    }

    private static func pathString(_ path: [CodingKey]) -> String {
        path.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
    }

    func validate() throws {
        guard input.shape.count == 4, input.shape[0] == 1 else {
            throw Invalid(message: "metadata: input.shape must be [1, ., ., .], got \(input.shape)")
        }
        guard input.channels == 3 else { throw Invalid(message: "metadata: the app feeds RGB, input has \(input.channels) channels") }
        guard input.dtype == "float32" else { throw Invalid(message: "metadata: input.dtype must be float32, got '\(input.dtype)'") }
        guard input.resize == "center-crop-then-bilinear" else { throw Invalid(message: "metadata: unknown input.resize '\(input.resize)'") }
        guard cropFraction > 0, cropFraction <= 1 else {
            throw Invalid(message: "metadata: preprocessing.crop_fraction must be in (0, 1], got \(cropFraction)")
        }
        try programs?.validate()
        if let ps = paritySet {
            for (i, im) in ps.images.enumerated() {
                guard im.bytes?.count == ps.height * ps.width * 3 else {
                    throw Invalid(message: "metadata: parity_set.images[\(i)] is not \(ps.height)x\(ps.width)x3 base64 bytes")
                }
                guard im.logits.count == labels.count else {
                    throw Invalid(message: "metadata: parity_set.images[\(i)].logits must be \(labels.count) numbers")
                }
            }
        }
        guard input.mean.count == 3, input.std.count == 3, input.std.allSatisfy({ $0 > 0 }) else {
            throw Invalid(message: "metadata: input.mean/std must be 3 numbers with std > 0, got \(input.mean) / \(input.std)")
        }
        if let sc = superclasses {
            guard sc.classToSuperclass.count == labels.count else {
                throw Invalid(message: "metadata: superclasses.class_to_superclass has \(sc.classToSuperclass.count) entries for \(labels.count) labels")
            }
            guard sc.classToSuperclass.allSatisfy({ sc.names.indices.contains($0) }) else {
                throw Invalid(message: "metadata: superclass id out of range in \(sc.classToSuperclass)")
            }
        }
    }
}
