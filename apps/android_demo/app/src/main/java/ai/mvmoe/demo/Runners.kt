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
        /** [threads]: ExecuTorch's threadpool size (null = its default); LiteRT picks its own. */
        fun create(context: Context, asset: ModelAsset, computeUnits: String, threads: Int? = null,
                   maxTails: Int = 2): Runner {
            val programs = asset.meta.programs
            return when {
                programs != null && asset.runtime == "executorch" -> SplitExecuTorchRunner(context, asset, programs, threads, maxTails)
                programs != null -> SplitLiteRtRunner(context, asset, programs, computeUnits, maxTails)
                asset.runtime == "executorch" -> ExecuTorchRunner(context, asset, threads)
                else -> LiteRtRunner(context, asset, computeUnits)
            }
        }

        /** Outputs are picked by the names and order the .json gives (never by length). */
        fun split(asset: ModelAsset, outs: List<FloatArray>): Outputs {
            val (logits, experts) = Postprocess.splitOutputs(asset.meta, outs)
            return Outputs(logits, experts)
        }
    }
}

/** LiteRT CompiledModel API (com.google.ai.edge.litert 2.x) on the CPU (XNNPACK) or the GPU accelerator. */
class LiteRtRunner(context: Context, private val asset: ModelAsset, override val computeUnits: String) : Runner {
    override val runtime = "litert"
    override val threads: Int? = null  // LiteRT picks the CPU thread count itself
    private val model = CompiledModel.create(
        context.assets, asset.assetPath,
        CompiledModel.Options(if (computeUnits == "gpu") Accelerator.GPU else Accelerator.CPU),
    )
    private val inputs = model.createInputBuffers()
    private val outputs = model.createOutputBuffers()

    // The .json's `ops` block says how much of the graph the exporter saw delegated (XNNPACK on the
    // desktop); ops the GPU delegate rejects fall back to the CPU, which LiteRT logs to logcat.
    override val accelerator: String = "LiteRT ${computeUnits.uppercase()}" +
        (asset.meta.opsDelegated?.let { (d, t) -> ", $d/$t ops delegated at export" } ?: "")

    override fun run(input: FloatArray) {
        inputs[0].writeFloats(input, asset.meta.io?.input(0))
        model.run(inputs, outputs)
    }

    override fun outputs(): Outputs = Runner.split(asset, outputs.mapIndexed { i, b -> b.readFloats(asset.meta.io?.output(i)) })

    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
    }
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

/** One .tflite of a split LiteRT artifact folder, compiled on its own. */
private class LiteRtProgram(context: Context, assetPath: String, units: String) : AutoCloseable {
    val model: CompiledModel = CompiledModel.create(context.assets, assetPath,
        CompiledModel.Options(if (units == "gpu") Accelerator.GPU else Accelerator.CPU))
    val inputs = model.createInputBuffers()
    val outputs = model.createOutputBuffers()
    fun run() = model.run(inputs, outputs)
    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
    }
}

/** A split LiteRT artifact: a folder of trunk.tflite and tail_<e>.tflite, tails in an LRU of [maxTails]. */
class SplitLiteRtRunner(private val context: Context, private val asset: ModelAsset, private val programs: SplitPrograms,
                        override val computeUnits: String, maxTails: Int) : Runner {
    override val runtime = "litert"
    override val threads: Int? = null
    override val accelerator = "LiteRT ${computeUnits.uppercase()}, split: trunk + $maxTails expert tails"
    private val trunk = LiteRtProgram(context, "${asset.assetPath}/${programs.trunk.file}", computeUnits)
    private val cache = TailCache(maxTails, { e ->
        LiteRtProgram(context, "${asset.assetPath}/${programs.tail(e).file}", computeUnits) })
    override val tails: TailCache<*> get() = cache
    private var logits = FloatArray(0)
    private var probs: FloatArray? = null

    override fun run(input: FloatArray) {
        val trunkIo = programs.trunk.io
        trunk.inputs[0].writeFloats(input, trunkIo?.input(0))
        trunk.run()
        // LiteRT keeps the trunk's outputs in program order (output_0 ...): stream, expert_index, gate, expert_probs
        val expert = trunk.outputs[programs.indexOutput].readInt()[0]
        val tail = cache.get(expert)
        val tailIo = programs.tail(expert).io  // int8 ends differ per tail: each has its own scales
        programs.tailFeed.forEachIndexed { i, o ->
            tail.inputs[i].writeFloats(trunk.outputs[o].readFloats(trunkIo?.output(o)), tailIo?.input(i))
        }
        tail.run()
        logits = tail.outputs[0].readFloats(tailIo?.output(0))
        probs = trunk.outputs[programs.probsOutput].readFloats(trunkIo?.output(programs.probsOutput))
    }

    override fun outputs(): Outputs = Outputs(logits, probs)

    override fun close() {
        cache.close()
        trunk.close()
    }
}
