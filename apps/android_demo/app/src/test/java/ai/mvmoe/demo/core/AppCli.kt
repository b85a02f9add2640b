package ai.mvmoe.demo.core

import java.io.File

/**
 * Test helper run by tests/test_apps.py: the app's pipeline steps on files, so Python can drive them
 * against a real model and real `mvmoe export` metadata.
 *
 *   AppCliKt preprocess META.json IMAGE.json OUT.json   IMAGE: {"width", "height", "rgb": [bytes]} -> {"input": [...]}
 *   AppCliKt decode META.json OUTPUTS.json OUT.json     OUTPUTS: {"logits", "expert_probs"?} -> the Prediction
 *   AppCliKt bench OUT.json ms [ms ...]                 a benchmark file (docs/apps.md) written by BenchmarkReport
 */
fun main(args: Array<String>) {
    fun json(path: String) = Json.parse(File(path).readText(Charsets.UTF_8)) as Map<*, *>
    fun floats(v: Any?) = (v as List<*>).map { (it as Double).toFloat() }.toFloatArray()
    val out: Any = when (args.getOrNull(0)) {
        "preprocess" -> {
            val meta = ModelMetadata.parse(File(args[1]).readText(Charsets.UTF_8))
            val im = json(args[2])
            val rgb = (im["rgb"] as List<*>).map { (it as Double).toInt().toByte() }.toByteArray()
            val img = RgbImage((im["width"] as Double).toInt(), (im["height"] as Double).toInt(), rgb)
            mapOf("input" to Preprocess.toInput(img, meta.input))
        }
        "decode" -> {
            val meta = ModelMetadata.parse(File(args[1]).readText(Charsets.UTF_8))
            val o = json(args[2])
            val p = Postprocess.decode(meta, floats(o["logits"]), o["expert_probs"]?.let { floats(it) })
            mapOf("top" to p.top.map { it.index }, "labels" to p.top.map { it.label }, "probs" to p.top.map { it.prob },
                "expert" to p.expert, "superclass" to p.superclass)
        }
        "bench" -> {
            File(args[1]).writeText(BenchmarkReport(
                artifact = "vmoe-6x64-p32_tflite_fp32.tflite", app = "android_demo", device = "JVM test (\"desktop\")",
                runtime = "litert", computeUnits = "cpu", threads = 2, warmup = 3,
                runsMs = args.drop(2).map { it.toDouble() }, created = "2026-11-23T09:00:00Z",
            ).toJson())
            return
        }
        else -> error("usage: AppCliKt preprocess|decode|bench ...")
    }
    File(args[3]).writeText(Json.write(out))
}
