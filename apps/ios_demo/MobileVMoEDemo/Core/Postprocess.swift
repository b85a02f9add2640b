import Foundation

/// One ranked class: index into the labels, its name and softmax probability.
struct Ranked: Equatable {
    let index: Int
    let label: String
    let prob: Float
}

/// What the screen shows for one inference: top-k classes, the chosen expert and its superclass.
/// The superclass of an image is the one of its top expert (expert i <-> superclass i, docs/apps.md).
struct Prediction: Equatable {
    let top: [Ranked]
    let expert: Int?
    let expertProb: Float?
    let superclass: String?
}

enum Postprocess {
    /// Numerically stable softmax (subtracts the max), computed in double.
    static func softmax(_ logits: [Float]) -> [Float] {
        guard let m = logits.max() else { return [] }
        let e = logits.map { exp(Double($0) - Double(m)) }
        let s = e.reduce(0, +)
        return e.map { Float($0 / s) }
    }

    /// Indices of the k largest values, ties broken by the lower index.
    static func topK(_ values: [Float], _ k: Int) -> [Int] {
        let order = values.indices.sorted { a, b in values[a] != values[b] ? values[a] > values[b] : a < b }
        return Array(order.prefix(k))
    }

    /// Decode model outputs; `expertProbs` is the router's softmax output (nil for a dense model).
    static func decode(_ meta: ModelMetadata, logits: [Float], expertProbs: [Float]?, k: Int = 5) -> Prediction {
        let probs = softmax(logits)
        let top = topK(probs, min(k, probs.count)).map { i in
            Ranked(index: i, label: i < meta.labels.count ? meta.labels[i] : "class \(i)", prob: probs[i])
        }
        guard let ep = expertProbs, let e = topK(ep, 1).first else {
            return Prediction(top: top, expert: nil, expertProb: nil, superclass: nil)
        }
        let names = meta.superclasses?.names ?? []
        return Prediction(top: top, expert: e, expertProb: ep[e], superclass: e < names.count ? names[e] : nil)
    }
}
