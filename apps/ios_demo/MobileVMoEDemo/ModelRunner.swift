import CoreML
import CryptoKit
import Foundation
import UIKit

/// One exported model found in the app bundle: its metadata and where the compiled model lives.
struct BundledModel: Identifiable, Hashable {
    let meta: ModelMetadata
    let modelURL: URL  // .mlmodelc (compiled by Xcode) or .mlpackage (compiled on first load)
    var id: String { meta.artifact }

    // Identity is the artifact name (ModelMetadata itself is only Equatable).
    static func == (a: BundledModel, b: BundledModel) -> Bool { a.id == b.id && a.modelURL == b.modelURL }
    func hash(into hasher: inout Hasher) { hasher.combine(id) }
}

/// Core ML inference for one artifact: preprocessing per its metadata, prediction, decoding.
/// A split artifact (`--experts split`, a multifunction package) runs as its trunk plus the expert
/// tail the trunk chooses, each tail a model of its own function (iOS 18) kept in an LRU of `maxTails`.
final class ModelRunner {
    let model: BundledModel
    let mlModel: MLModel  // the whole model, or the trunk of a split artifact
    let tails: TailCache<MLModel>?
    let compiledURL: URL
    let computeUnits: MLComputeUnits
    private let logitsName: String
    private let expertName: String?

    /// `computeUnits`: .cpuOnly, .cpuAndGPU, .cpuAndNeuralEngine or .all (MLModelConfiguration).
    init(_ model: BundledModel, computeUnits: MLComputeUnits = .all, maxTails: Int = 2) throws {
        let url = try ModelRunner.compiledURL(for: model.modelURL, key: model.meta.artifactFile?.sha256)
        func config(_ function: String?) throws -> MLModelConfiguration {
            let c = MLModelConfiguration()
            c.computeUnits = computeUnits
            if let function {
                guard #available(iOS 18.0, *) else {
                    throw ModelMetadata.Invalid(message: "\(model.meta.artifact) is split into functions: needs iOS 18")
                }
                c.functionName = function
            }
            return c
        }
        self.model = model
        compiledURL = url
        self.computeUnits = computeUnits
        if let programs = model.meta.programs {
            mlModel = try MLModel(contentsOf: url, configuration: config(programs.trunk.name))
            tails = TailCache(capacity: maxTails) { e in try MLModel(contentsOf: url, configuration: config(try programs.tail(e).name)) }
            logitsName = "logits"
            expertName = "expert_probs"
            return
        }
        tails = nil
        mlModel = try MLModel(contentsOf: url, configuration: config(nil))
        // Output names as exported ("logits", "expert_probs"); fall back to matching shapes if a converter renamed them.
        let outs = mlModel.modelDescription.outputDescriptionsByName
        let n = model.meta.labels.count, e = model.meta.experts
        func byLength(_ len: Int) -> String? {
            outs.first { $0.value.multiArrayConstraint?.shape.last?.intValue == len }?.key
        }
        guard let logits = outs["logits"] != nil ? "logits" : byLength(n) else {
            throw ModelMetadata.Invalid(message: "\(model.meta.artifact): no output with \(n) logits (outputs: \(outs.keys.sorted()))")
        }
        logitsName = logits
        expertName = model.meta.hasExpertProbs ? (outs["expert_probs"] != nil ? "expert_probs" : byLength(e)) : nil
    }

    /// Xcode compiles a bundled .mlpackage to .mlmodelc; a package copied as a plain resource is compiled
    /// once here. The cache is keyed by content (the .json's artifact_file.sha256, else the package's
    /// size and modification time), so a re-exported package of the same name is compiled again.
    static func compiledURL(for url: URL, key: String?) throws -> URL {
        if url.pathExtension == "mlmodelc" { return url }
        let cache = try FileManager.default.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let dest = cache.appendingPathComponent(url.deletingPathExtension().lastPathComponent + "-" +
                                                (key.map { String($0.prefix(16)) } ?? contentStamp(url)) + ".mlmodelc")
        if FileManager.default.fileExists(atPath: dest.path) { return dest }
        let tmp = try MLModel.compileModel(at: url)
        try FileManager.default.moveItem(at: tmp, to: dest)
        return dest
    }

    /// "<bytes>-<mtime>" of a folder's files: the fallback cache key when the .json has no hash.
    static func contentStamp(_ url: URL) -> String {
        let keys: [URLResourceKey] = [.fileSizeKey, .contentModificationDateKey]
        var bytes = 0, newest = 0.0
        for case let f as URL in FileManager.default.enumerator(at: url, includingPropertiesForKeys: keys) ?? .init() {
            let v = try? f.resourceValues(forKeys: Set(keys))
            bytes += v?.fileSize ?? 0
            newest = max(newest, v?.contentModificationDate?.timeIntervalSince1970 ?? 0)
        }
        return "\(bytes)-\(Int(newest))"
    }

    /// Flat float input (layout of docs/apps.md) -> MLMultiArray of input.shape.
    func makeInput(_ values: [Float]) throws -> MLFeatureProvider {
        let shape = model.meta.input.shape.map { NSNumber(value: $0) }
        let arr = try MLMultiArray(shape: shape, dataType: .float32)
        precondition(arr.count == values.count, "input has \(arr.count) elements, preprocessing made \(values.count)")
        arr.withUnsafeMutableBufferPointer(ofType: Float.self) { ptr, _ in
            for i in 0..<values.count { ptr[i] = values[i] }
        }
        return try MLDictionaryFeatureProvider(dictionary: [model.meta.input.name: MLFeatureValue(multiArray: arr)])
    }

    /// What a run leaves before any output is read: the last program's outputs and, for a split
    /// artifact, the trunk's `expert_probs` (the tail does not return it).
    struct RawOutputs {
        let features: MLFeatureProvider
        let trunkProbs: MLMultiArray?
    }

    /// The timed part of a run, the same span as Android's `Runner.run`: the input written into its
    /// `MLMultiArray` and the prediction (split: trunk, then the chosen tail fed with the trunk's
    /// outputs named in the .json). No output is read into Swift arrays here.
    func run(_ values: [Float]) throws -> RawOutputs {
        try run(makeInput(values))
    }

    func run(_ input: MLFeatureProvider) throws -> RawOutputs {
        let out = try mlModel.prediction(from: input)
        let probs = out.featureValue(for: "expert_probs")?.multiArrayValue
        guard let tails, let programs = model.meta.programs else { return RawOutputs(features: out, trunkProbs: nil) }
        guard let index = out.featureValue(for: "expert_index")?.multiArrayValue else {
            throw ModelMetadata.Invalid(message: "the trunk returned no expert_index")
        }
        let feed = try MLDictionaryFeatureProvider(dictionary: Dictionary(uniqueKeysWithValues: programs.tailInputs.map {
            ($0, out.featureValue(for: $0) ?? MLFeatureValue(double: 0))
        }))
        return RawOutputs(features: try tails.get(index[0].intValue).prediction(from: feed), trunkProbs: probs)
    }

    /// Reads the logits and expert probabilities of a run into arrays (the start of postprocessing,
    /// as Android's `Runner.outputs`).
    func read(_ raw: RawOutputs) throws -> (logits: [Float], expertProbs: [Float]?) {
        func floats(_ name: String) -> [Float]? {
            guard let a = (name == "expert_probs" && raw.trunkProbs != nil ? raw.trunkProbs
                           : raw.features.featureValue(for: name)?.multiArrayValue) else { return nil }
            return (0..<a.count).map { a[$0].floatValue }  // handles fp16 and fp32 outputs alike
        }
        guard let logits = floats(logitsName) else {
            throw ModelMetadata.Invalid(message: "model returned no '\(logitsName)' output")
        }
        return (logits, expertName.flatMap(floats))
    }

    /// Run and read in one call (load checks, parity set, sample check).
    func predict(_ input: MLFeatureProvider) throws -> (logits: [Float], expertProbs: [Float]?) {
        try read(run(input))
    }

    /// Image -> prediction and the time of the run (input array written + prediction) in ms, the span
    /// the benchmark's `runs_ms` and the Android app's live latency time.
    func classify(_ image: RGBImage, invert: Bool = false) throws -> (Prediction, Double) {
        let values = Preprocess.toInput(image, model.meta.input, cropFraction: model.meta.cropFraction, invert: invert)
        let t0 = DispatchTime.now().uptimeNanoseconds
        let raw = try run(values)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
        let (logits, experts) = try read(raw)
        return (Postprocess.decode(model.meta, logits: logits, expertProbs: experts), ms)
    }
}

extension ModelRunner {
    /// True when Core ML may run the model off the CPU (GPU / Neural Engine compute in fp16).
    var accelerated: Bool { computeUnits != .cpuOnly }

    /// Where Core ML plans to run the model's operations: "ops on Neural Engine 120, GPU 0, CPU 8".
    /// `MLComputePlan.load(contentsOf:configuration:)` is `async throws` (iOS 17.4+); the trunk
    /// function of a split package is named through `MLModelConfiguration.functionName` (iOS 18.0+).
    /// Nil when the plan cannot be read.
    @available(iOS 17.4, *)
    func computePlanSummary() async -> String? {
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        var function = "main"
        if let programs = model.meta.programs {
            guard #available(iOS 18.0, *) else { return nil }  // split packages need iOS 18 anyway
            config.functionName = programs.trunk.name
            function = programs.trunk.name
        }
        guard let plan = try? await MLComputePlan.load(contentsOf: compiledURL, configuration: config),
              case .program(let program) = plan.modelStructure,
              let main = program.functions[function] ?? program.functions.values.first else { return nil }
        var counts = ["Neural Engine": 0, "GPU": 0, "CPU": 0]
        for op in main.block.operations {
            switch plan.deviceUsage(for: op)?.preferred {
            case .neuralEngine: counts["Neural Engine", default: 0] += 1
            case .gpu: counts["GPU", default: 0] += 1
            case .cpu: counts["CPU", default: 0] += 1
            default: break
            }
        }
        return "compute plan: ops on Neural Engine \(counts["Neural Engine"]!), GPU \(counts["GPU"]!), CPU \(counts["CPU"]!)" +
            (model.meta.programs != nil ? " (trunk)" : "")
    }

    /// The .json's parity set through this model: "parity: max diff X, top-1 agree Y/Z, expert agree Y/Z (ok)",
    /// with the tolerance widened to fp16's when Core ML may run off the CPU.
    func paritySummary() -> (text: String, ok: Bool) {
        guard let set = model.meta.paritySet else { return ("parity: no parity set in the .json (re-export with this mvmoe)", true) }
        do {
            let r = try Parity.runWithExperts(set, model.meta.input, accelerated: accelerated) { x in
                let out = try predict(makeInput(x))
                return (out.logits, out.expertProbs)
            }
            return (r.summary, r.ok)
        } catch {
            return ("parity: could not run (\(error.localizedDescription))", false)
        }
    }

    /// The bundled sample at full size through the app's own preprocessing against the exporter's logits.
    func sampleSummary(_ image: RGBImage) -> String? {
        guard let check = model.meta.sampleCheck else { return nil }
        let sha = SHA256.hash(data: Data(image.rgb)).map { String(format: "%02x", $0) }.joined()
        do {
            return try Parity.sample(check, image: image, sha256: sha, input: model.meta.input, cropFraction: model.meta.cropFraction,
                                     accelerated: accelerated) { try predict(makeInput($0)).logits }
        } catch {
            return "sample: could not run (\(error.localizedDescription))"
        }
    }
}

/// Finds the exported models in the bundle and holds the one in use.
@MainActor
final class ModelStore: ObservableObject {
    @Published var models: [BundledModel] = []
    @Published var selected: BundledModel?
    @Published var error: String?

    /// Every `<stem>.json` with a matching `<stem>.mlmodelc` or `<stem>.mlpackage` in the bundle
    /// (MobileVMoEDemo/Models/, filled by `mvmoe export --target coreml --app ios`).
    func loadBundledModels() {
        let fm = FileManager.default
        var roots = [Bundle.main.bundleURL]
        let modelsDir = Bundle.main.bundleURL.appendingPathComponent("Models")
        if fm.fileExists(atPath: modelsDir.path) { roots.append(modelsDir) }
        var found: [BundledModel] = []
        var problems: [String] = []
        for root in roots {
            let files = (try? fm.contentsOfDirectory(at: root, includingPropertiesForKeys: nil)) ?? []
            for json in files where json.pathExtension == "json" {
                guard let data = try? Data(contentsOf: json),
                      let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                      obj["artifact"] != nil else { continue }  // not an mvmoe metadata file
                let meta: ModelMetadata
                do {
                    meta = try ModelMetadata.parse(data)
                } catch {
                    problems.append("\(json.lastPathComponent): \(error.localizedDescription)")
                    continue
                }
                guard meta.target == "coreml" else { continue }
                if let problem = Parity.runtimeProblem(meta, iosVersion: UIDevice.current.systemVersion) {
                    problems.append(problem)  // e.g. a split (multifunction) package on iOS 17
                    continue
                }
                let stem = json.deletingPathExtension().lastPathComponent
                let candidates = [root.appendingPathComponent(stem + ".mlmodelc"), root.appendingPathComponent(stem + ".mlpackage")]
                if let url = candidates.first(where: { fm.fileExists(atPath: $0.path) }) {
                    found.append(BundledModel(meta: meta, modelURL: url))
                } else {
                    problems.append("\(json.lastPathComponent): no \(stem).mlpackage beside it")
                }
            }
        }
        models = found.sorted { $0.meta.artifact < $1.meta.artifact }
        selected = selected ?? models.first
        if models.isEmpty {
            error = (problems + ["No Core ML model in the app. Run `mvmoe export CHECKPOINT --target coreml --app ios`, then rebuild."])
                .joined(separator: "\n")
        } else {
            error = problems.isEmpty ? nil : problems.joined(separator: "\n")
        }
    }
}
