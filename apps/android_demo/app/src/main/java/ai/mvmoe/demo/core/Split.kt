package ai.mvmoe.demo.core

/** One program of a split artifact: its name (ExecuTorch method, or LiteRT program), file and (LiteRT int8) ends. */
data class ProgramRef(val name: String, val file: String, val io: IoQuantization? = null)

/**
 * The .json's "programs" of a split artifact (`mvmoe export --experts split`, docs/formats.md):
 *
 *     trunk(image) -> stream, expert_index, gate, expert_probs
 *     tail_<expert_index>(stream, gate) -> logits
 *
 * [trunkOutputs] and [tailInputs] are the names in program order, so the wiring never depends on
 * tensor sizes. ExecuTorch: every file is the one .pte and the names are its methods; LiteRT: the
 * files are trunk.tflite, tail_<e>.tflite inside the artifact folder.
 */
data class SplitPrograms(
    val trunk: ProgramRef,
    val tails: Map<Int, ProgramRef>,
    val trunkOutputs: List<String>,
    val tailInputs: List<String>,
    val streamShape: List<Int>,
    val gateShape: List<Int>,
) {
    /** Position of each tail input among the trunk's outputs: feed tail input i with trunk output [tailFeed][i]. */
    val tailFeed: List<Int> get() = tailInputs.map { name ->
        trunkOutputs.indexOf(name).also { if (it < 0) throw MetadataException("programs: tail input '$name' is not a trunk output") }
    }
    val indexOutput: Int get() = trunkOutputs.indexOf("expert_index")
    val probsOutput: Int get() = trunkOutputs.indexOf("expert_probs")

    fun tail(expert: Int): ProgramRef =
        tails[expert] ?: throw MetadataException("programs: the trunk chose expert $expert, which has no tail (${tails.keys.sorted()})")

    companion object {
        val TRUNK_OUTPUTS = listOf("stream", "expert_index", "gate", "expert_probs")

        /** Null when the .json has no "programs" (a stacked artifact). */
        fun fromMap(m: Map<*, *>?): SplitPrograms? {
            m ?: return null
            val trunk = m["trunk"] as? Map<*, *> ?: throw MetadataException("programs: missing object 'trunk'")
            val outs = names(trunk["outputs"], "programs.trunk.outputs")
            if (!outs.containsAll(TRUNK_OUTPUTS)) throw MetadataException("programs: trunk outputs $outs lack one of $TRUNK_OUTPUTS")
            val tailList = m["tails"] as? List<*> ?: throw MetadataException("programs: missing list 'tails'")
            if (tailList.isEmpty()) throw MetadataException("programs: no tails")
            val tails = tailList.associate { t ->
                val tm = t as? Map<*, *> ?: throw MetadataException("programs: a tail is not an object")
                val e = (tm["expert"] as? Double)?.toInt() ?: throw MetadataException("programs: a tail lacks 'expert'")
                e to ref(tm, "programs.tails[$e]")
            }
            val first = tailList[0] as Map<*, *>
            val shapes = m["tail_input_shapes"] as? List<*> ?: throw MetadataException("programs: missing 'tail_input_shapes'")
            fun shape(i: Int) = (shapes.getOrNull(i) as? List<*>)?.map { (it as Double).toInt() }
                ?: throw MetadataException("programs: tail_input_shapes[$i] missing")
            return SplitPrograms(ref(trunk, "programs.trunk"), tails, outs, names(first["inputs"], "programs.tails[0].inputs"),
                shape(0), shape(1))
        }

        private fun ref(m: Map<*, *>, path: String) = ProgramRef(
            m["name"] as? String ?: throw MetadataException("$path: missing 'name'"),
            m["file"] as? String ?: throw MetadataException("$path: missing 'file'"),
            IoQuantization.fromMap(m["io_quantization"] as? Map<*, *>, "$path.io_quantization"))

        private fun names(v: Any?, path: String): List<String> =
            (v as? List<*>)?.map { it as? String ?: throw MetadataException("$path must hold strings") }
                ?: throw MetadataException("missing list '$path'")
    }
}

/**
 * The expert tails an app keeps loaded: a least-recently-used cache of [capacity] tails. A miss
 * evicts (and closes) the least recently used tail, then loads the new one through [load], timing
 * it: [switchMs] holds every cold tail switch, [loads] counts them. [clockNs] is injectable for tests.
 */
class TailCache<T : AutoCloseable>(
    val capacity: Int,
    private val load: (Int) -> T,
    private val clockNs: () -> Long = System::nanoTime,
) : AutoCloseable {
    init { require(capacity >= 1) { "tail cache capacity must be >= 1, got $capacity" } }

    private val tails = LinkedHashMap<Int, T>(16, 0.75f, true)  // access order: eldest = least recently used
    val switchMs = mutableListOf<Double>()
    var loads = 0
        private set

    /** Experts loaded now, least recently used first. */
    val resident: List<Int> get() = tails.keys.toList()

    fun get(expert: Int): T {
        tails[expert]?.let { return it }
        if (tails.size >= capacity) {
            val eldest = tails.keys.first()
            tails.remove(eldest)?.close()
        }
        val t0 = clockNs()
        val tail = load(expert)
        switchMs += (clockNs() - t0) / 1e6
        loads += 1
        tails[expert] = tail
        return tail
    }

    override fun close() {
        tails.values.forEach { it.close() }
        tails.clear()
    }
}

/** Resident memory from /proc/self/status text (Android and Linux): VmRSS in MiB, null if absent. */
object Memory {
    fun rssMib(status: String): Double? = status.lineSequence()
        .firstOrNull { it.startsWith("VmRSS:") }
        ?.substringAfter(':')?.trim()?.split(Regex("\\s+"))?.firstOrNull()?.toDoubleOrNull()
        ?.let { it / 1024.0 }
}
