package ai.mvmoe.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test
import kotlin.math.abs

/** Reproduce every vector in golden.json (Python's numpy reference) within its tolerance. */
class GoldenTest {
    private val tol = Golden.tolerance
    private val metas = Golden.list("metadata").map { ModelMetadata.fromMap(it) }
    private val images = Golden.list("images").associate { m ->
        val bytes = Golden.ints(m, "rgb").map { it.toByte() }.toByteArray()
        m["name"] as String to RgbImage((m["width"] as Double).toInt(), (m["height"] as Double).toInt(), bytes)
    }

    @Test
    fun preprocessingMatchesNumpyReference() {
        val cases = Golden.list("preprocess")
        assertEquals(16, cases.size)  // 3 metadata x 4 images + the light-on-dark one inverted
        for (case in cases) {
            val meta = metas[(case["metadata"] as Double).toInt()]
            val img = images.getValue(case["image"] as String)
            val crop = Golden.ints(case, "crop")
            assertEquals(CropBox(crop[0], crop[1], crop[2]), Preprocess.centerCropBox(img.height, img.width, meta.input.cropFraction))
            val want = Golden.doubles(case, "expected")
            val got = Preprocess.toInput(img, meta.input, invert = case["invert"] as Boolean)
            assertEquals(want.size, got.size)
            var worst = 0.0
            for (i in want.indices) worst = maxOf(worst, abs(want[i] - got[i]))
            assertTrue("${meta.artifact} / ${case["image"]}: max |diff| $worst > $tol", worst <= tol)
        }
    }

    @Test
    fun softmaxTopKAndExpertMatch() {
        for (o in Golden.list("outputs")) {
            val logits = Golden.floats(o, "logits")
            val probs = Postprocess.softmax(logits)
            val want = Golden.doubles(o, "probs")
            for (i in want.indices) assertEquals(want[i], probs[i].toDouble(), tol)
            val pred = Postprocess.decode(metas[0], logits, Golden.floats(o, "expert_probs"))
            assertEquals(Golden.ints(o, "top5"), pred.top.map { it.index })
            val wantP = Golden.doubles(o, "top5_probs")
            pred.top.forEachIndexed { i, r -> assertEquals(wantP[i], r.prob.toDouble(), tol) }
            assertEquals((o["top_expert"] as Double).toInt(), pred.expert)
            assertEquals(o["superclass"], pred.superclass)
        }
    }

    @Test
    fun paritySetInputsAndVerdictsMatch() {
        val set = metas[0].paritySet!!
        val want = (Golden.root["parity_inputs"] as List<*>).map { l -> (l as List<*>).map { it as Double } }
        assertEquals(set.images.size, want.size)
        set.images.forEachIndexed { i, im ->
            val got = Preprocess.toInput(im.rgb, metas[0].input, cropFraction = 1.0)
            for (j in want[i].indices) assertEquals(want[i][j], got[j].toDouble(), tol)
        }
        for (p in Golden.list("parity")) {
            val got = (p["got"] as List<*>).map { l -> (l as List<*>).map { (it as Double).toFloat() }.toFloatArray() }
            val r = Parity.compare(set.images.map { it.logits }, got, p["tol"] as Double?)
            assertEquals(p["max_abs_diff"] as Double, r.maxAbsDiff, 1e-6)
            assertEquals((p["top1_agree"] as Double).toInt(), r.top1Agree)
            assertEquals(p["ok"], r.ok)
        }
    }

    @Test
    fun benchmarkStatsMatchNumpy() {
        for (b in Golden.list("bench")) {
            val s = BenchStats.of(Golden.doubles(b, "runs_ms"))
            assertEquals(b["min_ms"] as Double, s.minMs, 1e-9)
            assertEquals(b["median_ms"] as Double, s.medianMs, 1e-9)
            assertEquals(b["p90_ms"] as Double, s.p90Ms, 1e-9)
            assertEquals(b["mean_ms"] as Double, s.meanMs, 1e-9)
        }
    }

    @Test
    fun metadataFieldsParsed() {
        val m = metas[0]
        assertEquals("vmoe-6x64-p4_tflite_fp32.tflite", m.artifact)
        assertEquals(Layout.NHWC, m.input.layout)
        assertEquals(8, m.input.height)
        assertTrue(m.hasExpertProbs)
        assertEquals("quote \"three\" \\ \u00e9", m.labels[3])
        assertEquals(listOf(0, 0, 1, 0, 2, 1, 2, 1, 2, 2), m.superclasses!!.classToSuperclass)
        assertArrayEquals(floatArrayOf(0.485f, 0.456f, 0.406f), m.input.mean, 0f)
        assertTrue(metas[1].input.preprocessingBakedIn)
        assertEquals(null, metas[2].superclasses)
        assertEquals(false, metas[2].hasExpertProbs)
        assertEquals("xnnpack", metas[2].backend)
        assertEquals(16.0 / 18, m.input.cropFraction, 1e-12)
        assertEquals("light-on-dark", metas[2].polarity)
        assertEquals(RuntimeRequirement("executorch", "1.5.1", "xnnpack", listOf("android", "ios")), metas[2].runtime)
        assertEquals(4L, m.artifactFile!!.bytes)
        assertEquals(listOf("logits", "expert_probs"), m.outputNames)
    }
}
