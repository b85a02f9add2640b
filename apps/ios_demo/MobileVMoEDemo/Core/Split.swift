import Foundation

/// The .json's "programs" of a split artifact (`mvmoe export --experts split`, docs/formats.md): a
/// multifunction Core ML package whose functions are `trunk` and `tail_<e>`.
///
///     trunk(image) -> stream, expert_index, gate, expert_probs
///     tail_<expert_index>(stream, gate) -> logits
struct SplitPrograms: Decodable, Equatable {
    struct Program: Decodable, Equatable {
        var name: String
        var file: String
        var inputs: [String]?
        var outputs: [String]?
        var expert: Int?
    }

    var trunk: Program
    var tails: [Program]

    /// The function name of expert `e`'s tail, or an error naming the experts there are.
    func tail(_ e: Int) throws -> Program {
        guard let t = tails.first(where: { $0.expert == e }) else {
            throw ModelMetadata.Invalid(message: "programs: the trunk chose expert \(e), which has no tail")
        }
        return t
    }

    /// The tail's inputs by name, fed from the trunk's outputs of the same name.
    var tailInputs: [String] { tails.first?.inputs ?? ["stream", "gate"] }

    func validate() throws {
        let outs = trunk.outputs ?? []
        for name in ["stream", "expert_index", "gate", "expert_probs"] where !outs.contains(name) {
            throw ModelMetadata.Invalid(message: "programs: trunk outputs \(outs) lack '\(name)'")
        }
        for name in tailInputs where !outs.contains(name) {
            throw ModelMetadata.Invalid(message: "programs: tail input '\(name)' is not a trunk output")
        }
        if tails.isEmpty { throw ModelMetadata.Invalid(message: "programs: no tails") }
    }
}

/// The expert tails an app keeps loaded: least recently used first out, `capacity` at most. A miss
/// evicts the least recently used tail (dropping it frees the model) and loads the new one through
/// `load`, timed: `switchMs` holds every cold tail switch. `clock` (ns) is injectable for tests.
final class TailCache<T> {
    let capacity: Int
    private let load: (Int) throws -> T
    private let clock: () -> UInt64
    private var tails: [(expert: Int, value: T)] = []  // least recently used first
    private(set) var switchMs: [Double] = []
    private(set) var loads = 0

    init(capacity: Int, clock: @escaping () -> UInt64 = { DispatchTime.now().uptimeNanoseconds },
         load: @escaping (Int) throws -> T) {
        precondition(capacity >= 1, "tail cache capacity must be >= 1")
        self.capacity = capacity
        self.clock = clock
        self.load = load
    }

    var resident: [Int] { tails.map(\.expert) }

    func get(_ expert: Int) throws -> T {
        if let i = tails.firstIndex(where: { $0.expert == expert }) {
            let hit = tails.remove(at: i)
            tails.append(hit)
            return hit.value
        }
        if tails.count >= capacity { tails.removeFirst() }
        let t0 = clock()
        let value = try load(expert)
        switchMs.append(Double(clock() - t0) / 1e6)
        loads += 1
        tails.append((expert, value))
        return value
    }
}
