package ai.mvmoe.demo

import ai.mvmoe.demo.core.Postprocess
import ai.mvmoe.demo.core.QuantParams
import ai.mvmoe.demo.core.SplitPrograms
import ai.mvmoe.demo.core.TailCache
import android.content.Context
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import com.google.ai.edge.litert.TensorBuffer
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/** Raw model outputs: logits (N) and, for per-image MoE, the router's expert probabilities (E). */
class Outputs(val logits: FloatArray, val expertProbs: FloatArray?)

/**
 * One loaded artifact. [run] feeds the flat input (already in the layout of input.shape) and runs the
 * model — that call alone is what the benchmark times; [outputs] reads the results of the last run.
 * Create runners off the main thread (model load, and the .pte copy, take time).
 */
interface Runner : AutoCloseable {
    val runtime: String       // benchmark file: litert | executorch
    val computeUnits: String  // benchmark file: cpu | gpu
    val threads: Int?
    /** Where the model runs, for the screen: accelerator and delegation. */
    val accelerator: String
    fun run(input: FloatArray)
    fun outputs(): Outputs

    fun infer(input: FloatArray): Outputs { run(input); return outputs() }

    /** Split artifacts: the expert tails loaded now and every cold tail switch so far (ms); null otherwise. */
    val tails: TailCache<*>? get() = null

    companion object {
        /** [threads]: ExecuTorch's threadpool size or LiteRT's CPU threads (null = the runtime's default). */
        fun create(context: Context, asset: ModelAsset, computeUnits: String, threads: Int? = null,
                   maxTails: Int = 2): Runner {
            val programs = asset.meta.programs
            return when {
                programs != null && asset.runtime == "executorch" -> SplitExecuTorchRunner(context, asset, programs, threads, maxTails)
                programs != null -> SplitLiteRtRunner(context, asset, programs, computeUnits, threads, maxTails)
                asset.runtime == "executorch" -> ExecuTorchRunner(context, asset, threads)
                else -> LiteRtRunner(context, asset, computeUnits, threads)
            }
        }

        /** Outputs are picked by the names and order the .json gives (never by length). */
        fun split(asset: ModelAsset, outs: List<FloatArray>): Outputs {
            val (logits, experts) = Postprocess.splitOutputs(asset.meta, outs)
            return Outputs(logits, experts)
        }
    }
}

/**
 * LiteRT options: the accelerator, and the CPU thread count when set (CompiledModel.CpuOptions(numThreads),
 * google-ai-edge/LiteRT litert/kotlin/src/main/kotlin/com/google/ai/edge/litert/Model.kt); null = LiteRT's default.
 */
internal fun liteRtOptions(units: String, threads: Int?): CompiledModel.Options =
    CompiledModel.Options(if (units == "gpu") Accelerator.GPU else Accelerator.CPU).apply {
        if (threads != null) cpuOptions = CompiledModel.CpuOptions(numThreads = threads)
    }

/**
 * One .tflite compiled on its own. Buffers are created and passed by the signature's tensor names
 * (litert-torch names them args_<i> and output_<i> in program order; the exporter's io_quantization
 * uses the same names), through CompiledModel.run(Map, Map): the list order of createOutputBuffers()
 * is the signature's stored order, which nothing here has to assume.
 */
private class LiteRtProgram(context: Context, assetPath: String, units: String, threads: Int?, inputs: Int, outputs: Int) :
    AutoCloseable {
    val model: CompiledModel = CompiledModel.create(context.assets, assetPath, liteRtOptions(units, threads))
    private val ins = (0 until inputs).associate { "args_$it" to model.createInputBuffer("args_$it") }
    private val outs = (0 until outputs).associate { "output_$it" to model.createOutputBuffer("output_$it") }
    fun input(i: Int): TensorBuffer = ins.getValue("args_$i")
    fun output(i: Int): TensorBuffer = outs.getValue("output_$i")
    fun run() = model.run(ins, outs)
    override fun close() {
        ins.values.forEach { it.close() }
        outs.values.forEach { it.close() }
        model.close()
    }
}

/** LiteRT CompiledModel API (com.google.ai.edge.litert 2.x) on the CPU (XNNPACK) or the GPU accelerator. */
class LiteRtRunner(context: Context, private val asset: ModelAsset, override val computeUnits: String,
                   override val threads: Int? = null) : Runner {
    override val runtime = "litert"
    private val program = LiteRtProgram(context, asset.assetPath, computeUnits, threads, 1, asset.meta.outputNames.size)

    // The .json's `ops` block says how much of the graph the exporter saw delegated (XNNPACK on the
    // desktop); ops the GPU delegate rejects fall back to the CPU, which LiteRT logs to logcat.
    override val accelerator: String = "LiteRT ${computeUnits.uppercase()}${threads?.let { ", $it threads" } ?: ""}" +
        (asset.meta.opsDelegated?.let { (d, t) -> ", $d/$t ops delegated at export" } ?: "")

    override fun run(input: FloatArray) {
        program.input(0).writeFloats(input, asset.meta.io?.input(0))
        program.run()
    }

    override fun outputs(): Outputs =
        Runner.split(asset, asset.meta.outputNames.indices.map { i -> program.output(i).readFloats(asset.meta.io?.output(i)) })

    override fun close() = program.close()
}

/** ExecuTorch Android module (org.pytorch.executorch), memory-mapped; XNNPACK-lowered .pte runs on the CPU. */
class ExecuTorchRunner(context: Context, private val asset: ModelAsset, override val threads: Int? = null) : Runner {
    override val runtime = "executorch"
    override val computeUnits = "cpu"
    override val accelerator = "ExecuTorch ${asset.meta.backend ?: "portable"} (CPU${threads?.let { ", $it threads" } ?: ""})"
    private val module = Module.load(ModelAssets.toFile(context, asset).absolutePath, Module.LOAD_MODE_MMAP, threads ?: 0)
    private val shape = asset.meta.input.shape.map { it.toLong() }.toLongArray()
    private var last: Array<EValue> = emptyArray()

    override fun run(input: FloatArray) {
        last = module.forward(EValue.from(Tensor.fromBlob(input, shape)))
    }

    override fun outputs(): Outputs = Runner.split(asset, last.map { it.toTensor().dataAsFloatArray })

    override fun close() = module.destroy()
}

/** An ExecuTorch method of a split .pte in its own memory-mapped Module: destroying it frees the method. */
private class EtProgram(path: String, private val method: String, threads: Int?) : AutoCloseable {
    private val module = Module.load(path, Module.LOAD_MODE_MMAP, threads ?: 0).also { it.loadMethod(method) }
    fun run(vararg inputs: EValue): Array<EValue> = module.execute(method, *inputs)
    override fun close() = module.destroy()
}

/**
 * A split ExecuTorch artifact (`mvmoe export --experts split`): the trunk always loaded, the expert
 * tails in an LRU of [maxTails] (each its own Module over the memory-mapped file, so only the
 * trunk and the cached tails are resident). Wiring from the .json's "programs".
 */
class SplitExecuTorchRunner(context: Context, private val asset: ModelAsset, private val programs: SplitPrograms,
                            override val threads: Int?, maxTails: Int) : Runner {
    override val runtime = "executorch"
    override val computeUnits = "cpu"
    override val accelerator = "ExecuTorch ${asset.meta.backend ?: "portable"} (CPU), split: trunk + $maxTails expert tails"
    private val path = ModelAssets.toFile(context, asset).absolutePath
    private val trunk = EtProgram(path, programs.trunk.name, threads)
    private val cache = TailCache(maxTails, { e -> EtProgram(path, programs.tail(e).name, threads) })
    override val tails: TailCache<*> get() = cache
    private val shape = asset.meta.input.shape.map { it.toLong() }.toLongArray()
    private var logits = FloatArray(0)
    private var probs: FloatArray? = null

    override fun run(input: FloatArray) {
        val outs = trunk.run(EValue.from(Tensor.fromBlob(input, shape)))
        val expert = outs[programs.indexOutput].toTensor().dataAsIntArray[0]
        val feed = programs.tailFeed.map { outs[it] }.toTypedArray()
        logits = cache.get(expert).run(*feed)[0].toTensor().dataAsFloatArray
        probs = outs[programs.probsOutput].toTensor().dataAsFloatArray
    }

    override fun outputs(): Outputs = Outputs(logits, probs)

    override fun close() {
        cache.close()
        trunk.close()
    }
}

/** A float end as is; an int8 end of a static int8 LiteRT model quantized with its .json parameters. */
internal fun TensorBuffer.writeFloats(x: FloatArray, q: QuantParams?) = if (q == null) writeFloat(x) else writeInt8(q.quantize(x))

internal fun TensorBuffer.readFloats(q: QuantParams?): FloatArray = if (q == null) readFloat() else q.dequantize(readInt8())

/** A split LiteRT artifact: a folder of trunk.tflite and tail_<e>.tflite, tails in an LRU of [maxTails]. */
class SplitLiteRtRunner(private val context: Context, private val asset: ModelAsset, private val programs: SplitPrograms,
                        override val computeUnits: String, override val threads: Int?, maxTails: Int) : Runner {
    override val runtime = "litert"
    override val accelerator = "LiteRT ${computeUnits.uppercase()}${threads?.let { ", $it threads" } ?: ""}, " +
        "split: trunk + $maxTails expert tails"
    private val trunk = LiteRtProgram(context, "${asset.assetPath}/${programs.trunk.file}", computeUnits, threads,
        1, programs.trunkOutputs.size)
    private val cache = TailCache(maxTails, { e ->
        LiteRtProgram(context, "${asset.assetPath}/${programs.tail(e).file}", computeUnits, threads, programs.tailFeed.size, 1) })
    override val tails: TailCache<*> get() = cache
    private var logits = FloatArray(0)
    private var probs: FloatArray? = null

    override fun run(input: FloatArray) {
        val trunkIo = programs.trunk.io
        trunk.input(0).writeFloats(input, trunkIo?.input(0))
        trunk.run()
        // output_<i> is the i-th trunk output of the .json: stream, expert_index, gate, expert_probs
        val expert = trunk.output(programs.indexOutput).readInt()[0]
        val tail = cache.get(expert)
        val tailIo = programs.tail(expert).io  // int8 ends differ per tail: each has its own scales
        programs.tailFeed.forEachIndexed { i, o ->
            tail.input(i).writeFloats(trunk.output(o).readFloats(trunkIo?.output(o)), tailIo?.input(i))
        }
        tail.run()
        logits = tail.output(0).readFloats(tailIo?.output(0))
        probs = trunk.output(programs.probsOutput).readFloats(trunkIo?.output(programs.probsOutput))
    }

    override fun outputs(): Outputs = Outputs(logits, probs)

    override fun close() {
        cache.close()
        trunk.close()
    }
}
