package ai.mvmoe.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

/** Hand-worked cases: parity set, preprocessing policy, artifact filter, stale copy, runtime version, benchmark JSON. */
class AppLogicTest {
    private fun meta(target: String, backend: String?, extra: String = ""): ModelMetadata = ModelMetadata.parse("""
        {"model": "m", "target": "$target", "backend": ${backend?.let { "\"$it\"" } ?: "null"}, "precision": "fp32",
         "artifact": "m.bin", "labels": ["a", "b"], "experts": 2,
         "outputs": [{"name": "expert_probs"}, {"name": "logits"}],
         "input": {"shape": [1, 3, 2, 2], "layout": "NCHW", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]} $extra}
    """)

    @Test
    fun cropFractionByHand() {
        // short side 13, fraction 16/18: 11.56 -> 12 pixels, left (20 - 12) / 2 = 4
        assertEquals(CropBox(0, 4, 12), Preprocess.centerCropBox(13, 20, 16.0 / 18))
        assertEquals(CropBox(1, 1, 1), Preprocess.centerCropBox(3, 3, 0.1))  // at least one pixel
        assertEquals(CropBox(0, 3, 13), Preprocess.centerCropBox(13, 20))
        val e = assertThrows(MetadataException::class.java) { meta("tflite", null, ""","preprocessing": {"crop_fraction": 1.5}""") }
        assertTrue(e.message!!, e.message!!.contains("crop_fraction"))
    }

    @Test
    fun inversionByHand() {
        // one pixel (255, 0, 51), inverted (0, 255, 204), normalised (x/255 - 0.5) / 0.25 = -2, 2, 1.2
        val m = meta("tflite", null)
        val img = RgbImage(1, 1, byteArrayOf(255.toByte(), 0, 51))
        val x = Preprocess.toInput(img, m.input.copy(shape = listOf(1, 3, 1, 1)), invert = true)
        assertArrayEquals(floatArrayOf(-2f, 2f, 1.2f), x, 1e-6f)
    }

    @Test
    fun outputsArePickedByNameNotLength() {
        // 2 classes and 2 experts: lengths cannot tell them apart; the .json says expert_probs comes first.
        val m = meta("tflite", null)
        val (logits, experts) = Postprocess.splitOutputs(m, listOf(floatArrayOf(0.9f, 0.1f), floatArrayOf(3f, 4f)))
        assertArrayEquals(floatArrayOf(3f, 4f), logits, 0f)
        assertArrayEquals(floatArrayOf(0.9f, 0.1f), experts, 0f)
        assertThrows(IllegalArgumentException::class.java) { Postprocess.splitOutputs(m, listOf(floatArrayOf(1f, 2f))) }
    }

    @Test
    fun parityCompareByHand() {
        // image 0: [1, 2] vs [1.5, 1.75] -> diff 0.5, top-1 both 1; image 1: [3, 0] vs [0, 3] -> diff 3, top-1 flips
        val exp = listOf(floatArrayOf(1f, 2f), floatArrayOf(3f, 0f))
        val r = Parity.compare(exp, listOf(floatArrayOf(1.5f, 1.75f), floatArrayOf(0f, 3f)), null)
        assertEquals(3.0, r.maxAbsDiff, 1e-12)
        assertEquals(1, r.top1Agree)
        assertFalse(r.ok)
        assertEquals("parity: max diff 3.0, top-1 agree 1/2 FAILED (top-1 differs)", r.summary())
        val one = Parity.compare(exp.take(1), listOf(floatArrayOf(1.5f, 1.75f)), 0.5)
        assertTrue(one.ok)
        assertFalse(one.copy(tolerance = 0.4).ok)
    }

    @Test
    fun paritySetRunsThroughTheInputPath() {
        // a 1x1 parity image of (255, 0, 51) with reference logits [2, -2]; the "runtime" returns the input's first two values
        val m = meta("tflite", null, ""","parity_set": {"encoding": "rgb8-base64", "height": 1, "width": 1,
            "max_abs_diff_tol": 0.001, "images": [{"rgb": "/wAz", "label": 0, "logits": [2.0, -2.0]}]}""")
        val set = m.paritySet!!
        assertEquals(listOf(255, 0, 51), (0..2).map { set.images[0].rgb.at(0, 0, it) })
        val input = m.input.copy(shape = listOf(1, 3, 1, 1), cropFraction = 0.5)  // crop is bypassed for the parity set
        val r = Parity.run(set, input) { x -> floatArrayOf(x[0], x[1]) }  // (255/255 - .5)/.25 = 2, (0 - .5)/.25 = -2
        assertEquals(0.0, r.maxAbsDiff, 1e-6)
        assertTrue(r.ok)
        val bad = assertThrows(MetadataException::class.java) {
            meta("tflite", null, ""","parity_set": {"encoding": "rgb8-base64", "height": 2, "width": 1, "images": [{"rgb": "/wAz", "logits": [1.0, 2.0]}]}""")
        }
        assertTrue(bad.message!!, bad.message!!.contains("3 bytes, expected 2x1x3"))
    }

    @Test
    fun artifactFilterByPlatform() {
        assertTrue(Artifacts.runnableOn(meta("tflite", null), "android"))
        assertTrue(Artifacts.runnableOn(meta("executorch", "xnnpack"), "android"))
        assertFalse(Artifacts.runnableOn(meta("executorch", "coreml"), "android"))
        assertFalse(Artifacts.runnableOn(meta("onnx", null), "android"))
        assertTrue(Artifacts.runnableOn(meta("coreml", null), "ios"))
        // the .json's runtime.platforms wins over the target rules
        val ios = meta("executorch", "xnnpack", ""","runtime": {"name": "executorch", "min_version": "1.5.1", "platforms": ["ios"]}""")
        assertFalse(Artifacts.runnableOn(ios, "android"))
    }

    @Test
    fun runtimeVersionCheck() {
        assertEquals(0, Artifacts.compareVersions("1.5", "1.5.0"))
        assertTrue(Artifacts.compareVersions("1.10.0", "1.9.2") > 0)
        assertEquals(0, Artifacts.compareVersions("1.5.1rc1", "1.5.1"))
        val m = meta("executorch", "xnnpack", ""","runtime": {"name": "executorch", "min_version": "1.5.1", "platforms": ["android"]}""")
        assertNull(Artifacts.runtimeProblem(m, mapOf("executorch" to "1.5.1")))
        assertNull(Artifacts.runtimeProblem(m, mapOf("executorch" to "1.6.0")))
        val old = Artifacts.runtimeProblem(m, mapOf("executorch" to "1.0.1"))!!
        assertTrue(old, old.contains("exported with executorch 1.5.1 but the app has 1.0.1"))
        assertTrue(Artifacts.runtimeProblem(m, emptyMap())!!.contains("does not include"))
        assertNull(Artifacts.runtimeProblem(meta("tflite", null), emptyMap()))  // older .json: nothing to check
    }

    @Test
    fun staleCopyBySizeTimeAndHash() {
        val src = FileStamp(100, 2_000)
        assertTrue(StaleCopy.needsCopy(src, null, null))
        assertFalse(StaleCopy.needsCopy(src, FileStamp(100, 3_000), null))
        assertTrue(StaleCopy.needsCopy(src, FileStamp(100, 1_000), null))  // older than the APK's asset
        assertTrue(StaleCopy.needsCopy(src, FileStamp(99, 3_000), null))
        // with the exporter's fingerprint, a re-export of the same size and an old time is still caught by its hash
        val abc = StaleCopy.sha256Hex("abc".byteInputStream())
        assertEquals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", abc)
        val fp = FileFingerprint(3, abc)
        assertFalse(StaleCopy.needsCopy(FileStamp(3, 0), FileStamp(3, 0, abc), fp))
        assertTrue(StaleCopy.needsCopy(FileStamp(3, 0), FileStamp(3, 9_000, StaleCopy.sha256Hex("abd".byteInputStream())), fp))
    }

    @Test
    fun benchmarkJsonKeepsStagesApart() {
        val r = BenchmarkReport("m_tflite_fp32.tflite", "android_demo", "Pixel 8 (Android 15)", "litert", "cpu", 4, 10,
            listOf(2.0, 1.0), "2026-11-23T09:00:00Z", preprocessMs = listOf(0.5, 0.25), postprocessMs = listOf(0.125, 0.0625),
            loadMs = 40.0, firstRunMs = 9.5, accelerator = "LiteRT CPU, 4 threads")
        val m = Json.parse(r.toJson()) as Map<*, *>
        assertEquals(listOf(2.0, 1.0), m["runs_ms"])
        assertEquals(listOf(0.5, 0.25), m["preprocess_ms"])
        assertEquals(listOf(0.125, 0.0625), m["postprocess_ms"])
        assertEquals(40.0, m["load_ms"])
        assertEquals(9.5, m["first_run_ms"])
        assertEquals("LiteRT CPU, 4 threads", m["accelerator"])
        assertEquals(1.0, m["version"])
        assertThrows(IllegalArgumentException::class.java) { r.copy(preprocessMs = listOf(1.0)) }
    }

    private val programs = ""","programs": {"chain": "c",
        "trunk": {"name": "trunk", "file": "m.pte", "inputs": ["image"], "outputs": ["stream", "expert_index", "gate", "expert_probs"]},
        "tail_input_shapes": [[1, 5, 32], [1, 1]], "tail_output_shapes": [[1, 2]],
        "tails": [{"expert": 0, "name": "tail_0", "file": "m.pte", "inputs": ["stream", "gate"], "outputs": ["logits"]},
                  {"expert": 1, "name": "tail_1", "file": "m.pte", "inputs": ["stream", "gate"], "outputs": ["logits"]}]}"""

    @Test
    fun splitProgramsWiredByName() {
        val p = meta("executorch", "xnnpack", programs).programs!!
        assertEquals(ProgramRef("tail_1", "m.pte"), p.tail(1))
        assertEquals(listOf(0, 2), p.tailFeed)  // stream is trunk output 0, gate is output 2
        assertEquals(1, p.indexOutput)
        assertEquals(listOf(1, 5, 32), p.streamShape)
        assertNull(meta("executorch", "xnnpack").programs)
        val e = assertThrows(MetadataException::class.java) { p.tail(7) }
        assertTrue(e.message!!, e.message!!.contains("expert 7"))
        assertThrows(MetadataException::class.java) { meta("executorch", "xnnpack", programs.replace("\"gate\", \"expert_probs\"]", "\"expert_probs\"]")) }
    }

    @Test
    fun int8EndsQuantizedByHand() {
        // scale 0.5, zero point -10 (the desktop runner's hand case): 1.26 / 0.5 = 2.52 -> 3, -10 + 3 = -7;
        // -100 / 0.5 - 10 = -210 -> -128; 200 / 0.5 - 10 = 390 -> 127; 0.75 / 0.5 = 1.5 -> 2 (half to even).
        val q = QuantParams(0.5f, -10)
        assertArrayEquals(byteArrayOf(-10, -7, -128, 127, -8), q.quantize(floatArrayOf(0f, 1.26f, -100f, 200f, 0.75f)))
        assertArrayEquals(floatArrayOf(0f, 1.5f, -59f, 68.5f), q.dequantize(byteArrayOf(-10, -7, -128, 127)), 0f)
        // LiteRT's softmax output: scale 1/256, zero point -128 -> 0.5 is q = 0, 1.0 clips to 127 (0.99609375).
        val p = QuantParams(1f / 256, -128)
        assertArrayEquals(byteArrayOf(0, 127), p.quantize(floatArrayOf(0.5f, 1f)))
        assertArrayEquals(floatArrayOf(0.5f, 0.99609375f), p.dequantize(byteArrayOf(0, 127)), 0f)
    }

    @Test
    fun ioQuantizationReadFromTheJson() {
        val io = ""","ops": {"io_quantization": {"inputs": [{"dtype": "int8", "scale": 0.012, "zero_point": -50}],
            "outputs": [{"dtype": "int8", "scale": 0.0257, "zero_point": -48}, {"dtype": "float32"}]}}"""
        val m = meta("tflite", null, io)
        assertEquals(QuantParams(0.012f, -50), m.io!!.input(0))
        assertEquals(QuantParams(0.0257f, -48), m.io!!.output(0))
        assertNull(m.io!!.output(1))
        assertNull(meta("tflite", null).io)  // float model: no io_quantization, every end float
        val tails = programs.replace("\"name\": \"tail_1\",", "\"name\": \"tail_1\", \"io_quantization\": " +
            "{\"inputs\": [{\"dtype\": \"float32\"}, {\"dtype\": \"int8\", \"scale\": 0.0039, \"zero_point\": -128}], " +
            "\"outputs\": [{\"dtype\": \"int8\", \"scale\": 0.031, \"zero_point\": -12}]},")
        val p = meta("tflite", null, tails).programs!!
        assertEquals(QuantParams(0.0039f, -128), p.tail(1).io!!.input(1))
        assertNull(p.tail(1).io!!.input(0))
        assertNull(p.tail(0).io)
        for (bad in listOf(""""scale": 0.0, "zero_point": 0""", """"scale": 0.1, "zero_point": 300""", """"scale": 0.1""")) {
            val e = assertThrows(MetadataException::class.java) {
                meta("tflite", null, io.replace(""""scale": 0.012, "zero_point": -50""", bad))
            }
            assertTrue(e.message!!, e.message!!.contains("ops.io_quantization.inputs[0]"))
        }
    }

    private class Tail(val e: Int, val closed: MutableList<Int>) : AutoCloseable {
        override fun close() { closed += e }
    }

    @Test
    fun tailCacheLruByHand() {
        // capacity 2, images routed 0, 1, 0, 2, 1: loads 0, 1, then 2 evicts 1 (0 was used last), then 1 evicts 0
        val closed = mutableListOf<Int>()
        var now = 0L
        val cache = TailCache(2, { e -> now += 3_000_000L; Tail(e, closed) }, { now })
        for (e in listOf(0, 1, 0, 2, 1)) assertEquals(e, cache.get(e).e)
        assertEquals(4, cache.loads)
        assertEquals(listOf(1, 0), closed)
        assertEquals(listOf(2, 1), cache.resident)
        assertEquals(listOf(3.0, 3.0, 3.0, 3.0), cache.switchMs)
        cache.close()
        assertEquals(listOf(1, 0, 2, 1), closed)
        assertThrows(IllegalArgumentException::class.java) { TailCache(0, { e -> Tail(e, closed) }) }
    }

    @Test
    fun rssFromProcStatus() {
        assertEquals(150.0, Memory.rssMib("Name:\tapp\nVmHWM:\t  204800 kB\nVmRSS:\t  153600 kB\n")!!, 1e-9)
        assertNull(Memory.rssMib("Name: app\n"))
    }

    @Test
    fun benchmarkJsonCarriesMemoryAndTailSwitches() {
        val r = BenchmarkReport("m.pte", "android_demo", "Pixel", "executorch", "cpu", 4, 1, listOf(1.0, 2.0), "t",
            rssMibAfterLoad = 12.5, rssMibAfterRuns = 14.0, expertLayout = "split", tailSwitchMs = listOf(3.0), tailsCached = 2)
        val j = Json.parse(r.toJson()) as Map<*, *>
        assertEquals(14.0, j["rss_mib_after_runs"])
        assertEquals(listOf(3.0), j["tail_switch_ms"])
        assertEquals("split", j["expert_layout"])
        assertThrows(IllegalArgumentException::class.java) {
            BenchmarkReport("m.pte", "android_demo", "Pixel", "executorch", "cpu", 4, 1, listOf(1.0), "t", tailSwitchMs = listOf(1.0))
        }
    }

    @Test
    fun antialiasTapsByHand() {
        // 4 -> 2: scale 2, support 2. Output 0: centre 1, taps 0..2, weights 1 - |j - 1 + 0.5| / 2 = .75, .75, .25;
        // output 1: centre 3, taps 1..3 with .25, .75, .75; each divided by their sum 1.75.
        val t = Preprocess.Taps(2, 4)
        assertArrayEquals(intArrayOf(0, 1), t.start)
        assertArrayEquals(doubleArrayOf(.75 / 1.75, .75 / 1.75, .25 / 1.75), t.weights[0], 1e-12)
        assertArrayEquals(doubleArrayOf(.25 / 1.75, .75 / 1.75, .75 / 1.75), t.weights[1], 1e-12)
        // same size: the identity (one tap of weight 1, a zero-weight neighbour)
        val id = Preprocess.Taps(3, 3)
        assertArrayEquals(intArrayOf(0, 1, 2), id.start)
        assertEquals(1.0, id.weights[1][0], 0.0)
    }

    @Test
    fun parityToleranceFollowsTheAcceleratorAndExpertsCount() {
        assertEquals(5e-2, Parity.tolerance(1e-3, accelerated = true)!!, 0.0)
        assertEquals(1e-3, Parity.tolerance(1e-3, accelerated = false)!!, 0.0)
        assertNull(Parity.tolerance(null, accelerated = true))  // int8: top-1 only, on any accelerator
        // same logits, but the router picked expert 0 instead of 1: not ok, and the line says why
        val r = Parity.compare(listOf(floatArrayOf(1f, 2f)), listOf(floatArrayOf(1f, 2f)), 1e-3,
            listOf(floatArrayOf(0.1f, 0.9f)), listOf(floatArrayOf(0.8f, 0.2f)))
        assertEquals(0, r.expertAgree)
        assertFalse(r.ok)
        assertEquals("parity: max diff 0.0, top-1 agree 1/1, expert agree 0/1 FAILED (expert differs)", r.summary())
        // no stored expert_probs (dense model or older .json): experts are not compared
        assertNull(Parity.compare(listOf(floatArrayOf(1f)), listOf(floatArrayOf(1f)), null, listOf(null), listOf(null)).expertAgree)
    }

    @Test
    fun sampleCheckComparesTheAppsOwnPreprocessing() {
        // 2x2 sample, model input 1x1: the antialiased resize averages the four pixels (weights .5/.5 per axis)
        val m = meta("tflite", null)
        val input = m.input.copy(shape = listOf(1, 3, 1, 1), preprocessingBakedIn = true)
        val img = RgbImage(2, 2, byteArrayOf(0, 0, 0, 100, 100, 100, 200.toByte(), 200.toByte(), 200.toByte(), 40, 40, 40))
        val sha = StaleCopy.sha256Hex(img.rgb.inputStream())
        val check = SampleCheck("s.png", 2, 2, sha, floatArrayOf(85f, 0f), 1e-3)
        var fed = FloatArray(0)
        val line = Parity.sample(check, img, input, accelerated = false) { fed = it; floatArrayOf(85f, 0f) }
        assertArrayEquals(floatArrayOf(85f, 85f, 85f), fed, 1e-4f)  // (0 + 100 + 200 + 40) / 4
        assertTrue(line, line.endsWith("same top-5 (ok)"))
        val off = Parity.sample(check, img, input, accelerated = false) { floatArrayOf(0f, 85f) }
        assertTrue(off, off.endsWith("top-5 differs FAILED"))
        val other = Parity.sample(SampleCheck("s.png", 2, 2, "0".repeat(64), floatArrayOf(85f, 0f), 1e-3), img, input, false) { it }
        assertTrue(other, other.contains("not compared"))
    }

    @Test
    fun copyIsHashedWhileWritten() {
        val out = java.io.ByteArrayOutputStream()
        val sha = StaleCopy.copyHashing("abc".byteInputStream(), out)
        assertEquals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", sha)  // FIPS 180-2 "abc"
        assertEquals("abc", out.toString())
    }

    @Test
    fun benchmarkFileCarriesTheCheckpointHash() {
        val r = BenchmarkReport("m.tflite", "android_demo", "d", "litert", "cpu", 2, 0, listOf(1.0), "t",
            checkpointSha256 = "ab" + "0".repeat(62))
        assertEquals("ab" + "0".repeat(62), (Json.parse(r.toJson()) as Map<*, *>)["checkpoint_sha256"])
        val meta = meta("tflite", null, ""","checkpoint_sha256": "cd"""")
        assertEquals("cd", meta.checkpointSha256)
    }
}
