"""The code catalogue of the synthetic world: every code it can emit, with a description and
parent codes, in the MEDS ``//`` naming the task files match (see docs/design.md).

ICD-10 and ATC codes are real codes with their usual meaning. ``PROC//JP//<9 digits>`` are
synthetic codes in the style of the Japanese receipt procedure master (診療行為マスター); their
descriptions say what they stand for. Codes are indexed by position in ``CODES``; the
simulation works on integer code ids and turns them into strings only when writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Antihypertensive ATC classes (the antihypertensive_start task's predicate: C02/C03/C07/C08/C09).
ANTIHYPERTENSIVE_PREFIXES = ("C02", "C03", "C07", "C08", "C09")

DRUGS = {
    "C09CA01": "losartan", "C09CA03": "valsartan", "C08CA01": "amlodipine",
    "C03CA01": "furosemide", "C07AB07": "bisoprolol",
    "A10BA02": "metformin", "A10BH01": "sitagliptin", "A10BK01": "dapagliflozin",
    "C10AA05": "atorvastatin", "C10AA07": "rosuvastatin",
    "B01AF02": "apixaban", "B01AC06": "aspirin", "B01AC04": "clopidogrel",
    "C01DA02": "glyceryl trinitrate", "R03BB04": "tiotropium",
    "R03AK06": "salmeterol and fluticasone", "M04AA01": "allopurinol", "M01AH01": "celecoxib",
    "M05BA04": "alendronic acid", "N06AB06": "sertraline", "N05CF02": "zolpidem",
    "N06DA02": "donepezil", "A02BC05": "esomeprazole", "H03AA01": "levothyroxine sodium",
    "G04CA02": "tamsulosin", "S01ED01": "timolol (eye drops)", "D07AC01": "betamethasone (topical)",
    "R06AX27": "desloratadine", "L01BC53": "tegafur, combinations", "B03AA07": "ferrous sulfate",
    "V03AE01": "polystyrene sulfonate", "B03XA01": "erythropoietin", "A07BA01": "medicinal charcoal (AST-120)",
    "J01CR02": "amoxicillin and beta-lactamase inhibitor", "J01MA12": "levofloxacin",
    "J05AH02": "oseltamivir", "J05AB11": "valaciclovir", "A07FA01": "lactic acid producing organisms",
    "J01DD16": "cefditoren", "N02BE01": "paracetamol", "R05CB06": "ambroxol",
    "R05CB03": "carbocisteine", "R06AX13": "loratadine", "R06AX26": "fexofenadine",
    "J01FA09": "clarithromycin", "J01CA04": "amoxicillin", "A02BA03": "famotidine",
    "A02AA02": "magnesium oxide", "A02BX14": "rebamipide", "M01AE01": "ibuprofen",
    "M02AA15": "diclofenac (topical)", "D01AE15": "terbinafine", "S01AE05": "levofloxacin (eye drops)",
    "R05DA09": "dextromethorphan", "B02AA02": "tranexamic acid", "A03FA03": "domperidone",
    "D10AD03": "adapalene", "G03AA12": "drospirenone and ethinylestradiol", "H02AB06": "prednisolone",
}

PROCS = {
    "111000110": "initial consultation fee (初診料)",
    "112007410": "revisit fee (再診料)",
    "160000310": "complete blood count (末梢血液一般検査)",
    "160010010": "HbA1c test",
    "160007410": "serum creatinine test",
    "160156210": "lipid panel",
    "160068410": "electrocardiogram (心電図)",
    "170000410": "chest X-ray (胸部単純X線撮影)",
    "160072110": "echocardiography (心臓超音波検査)",
    "160094510": "spirometry (呼吸機能検査)",
    "150253810": "hip fracture surgery (骨折観血的手術)",
    "150263410": "cataract surgery (水晶体再建術)",
    "140007410": "haemodialysis (人工腎臓)",
    "160095710": "gastroscopy (胃内視鏡検査)",
    "160093810": "colonoscopy (大腸内視鏡検査)",
    "160161310": "bone densitometry (骨塩定量検査)",
    "180016110": "psychotherapy (通院精神療法)",
    "160017810": "urinalysis (尿一般検査)",
}

DIAGNOSES = {
    "I10": "essential hypertension", "E11.9": "type 2 diabetes without complications",
    "E78.5": "hyperlipidaemia", "E66.9": "obesity", "I50.9": "heart failure",
    "I48.9": "atrial fibrillation", "I25.1": "atherosclerotic heart disease",
    "I69.3": "sequelae of cerebral infarction", "J44.9": "chronic obstructive pulmonary disease",
    "J45.9": "asthma", "M10.9": "gout", "M17.9": "gonarthrosis", "M81.0": "postmenopausal osteoporosis",
    "F32.9": "depressive episode", "G47.0": "insomnia", "G30.9": "Alzheimer disease",
    "K21.9": "gastro-oesophageal reflux disease", "E03.9": "hypothyroidism",
    "K76.0": "fatty liver", "N40": "hyperplasia of prostate", "H25.9": "senile cataract",
    "H40.1": "primary open-angle glaucoma", "L20.9": "atopic dermatitis",
    "J30.4": "allergic rhinitis", "C16.9": "malignant neoplasm of stomach",
    "C18.9": "malignant neoplasm of colon", "D50.9": "iron deficiency anaemia",
    "E87.5": "hyperkalaemia", "Z33": "pregnant state", "T78.3": "angioneurotic oedema",
    "J18.9": "pneumonia", "N39.0": "urinary tract infection", "J10.1": "influenza",
    "A09.9": "gastroenteritis", "B02.9": "zoster", "S72.0": "fracture of neck of femur",
    "N17.9": "acute kidney failure", "L03.9": "cellulitis", "E16.2": "hypoglycaemia",
    "S06.0": "concussion", "D63.1": "anaemia in chronic kidney disease",
    "N18.1": "chronic kidney disease, stage 1", "N18.2": "chronic kidney disease, stage 2",
    "N18.3": "chronic kidney disease, stage 3", "N18.4": "chronic kidney disease, stage 4",
    "N18.5": "chronic kidney disease, stage 5",
    # The Zipf background: common, mostly self-limiting complaints.
    "J00": "acute nasopharyngitis (common cold)", "J06.9": "acute upper respiratory infection",
    "J20.9": "acute bronchitis", "R05": "cough", "R50.9": "fever", "K29.7": "gastritis",
    "K59.0": "constipation", "R51": "headache", "M54.5": "low back pain", "L30.9": "dermatitis",
    "H10.9": "conjunctivitis", "J02.9": "acute pharyngitis", "J03.9": "acute tonsillitis",
    "A08.4": "viral intestinal infection", "R10.4": "abdominal pain", "M79.1": "myalgia",
    "L50.9": "urticaria", "H65.9": "otitis media", "K30": "functional dyspepsia",
    "M25.5": "pain in joint", "R42": "dizziness", "T14.0": "superficial injury",
    "S93.4": "sprain of ankle", "B35.1": "tinea unguium", "L70.0": "acne vulgaris",
    "J01.9": "acute sinusitis", "H52.1": "myopia", "K52.9": "non-infective gastroenteritis",
    "N76.0": "acute vaginitis", "M54.2": "cervicalgia", "R11": "nausea and vomiting",
    "Z23": "need for immunization",
    # Suspected diagnoses that are ruled out (疑い病名, dropped after the work-up).
    "I20.9": "angina pectoris", "K25.9": "gastric ulcer", "C34.9": "malignant neoplasm of lung",
    "J47": "bronchiectasis", "E05.9": "thyrotoxicosis",
}

CHECKUP_ITEMS = {
    "SBP": "systolic blood pressure (mmHg)", "DBP": "diastolic blood pressure (mmHg)",
    "HBA1C": "HbA1c (%)", "EGFR": "eGFR (mL/min/1.73m2)", "LDL": "LDL cholesterol (mg/dL)",
    "BMI": "body mass index (kg/m2)", "UPROT": "urine protein (0 = -, 1 = ±, 2 = +, 3 = ++)",
}

INSURERS = {
    "KENPO": "employer health insurance society (健康保険組合)",
    "KYOKAI": "Japan Health Insurance Association (協会けんぽ)",
    "KOKUHO": "national health insurance (国民健康保険)",
    "KOKI": "late-stage elderly medical care system, 75+ (後期高齢者医療制度)",
}
INSURER_KINDS = tuple(INSURERS)


def _catalogue() -> list[tuple[str, str, list[str]]]:
    rows: list[tuple[str, str, list[str]]] = [
        ("MEDS_BIRTH", "birth", []),
        ("GENDER//F", "female", []), ("GENDER//M", "male", []),
        ("ENROLL//START", "start of enrolment with an insurer", []),
        ("ENROLL//END", "end of enrolment", []),
        ("HC//SPECIFIC_CHECKUP", "specific health checkup (特定健診), ages 40-74", []),
    ]
    rows += [(f"INSURER//{k}", v, []) for k, v in INSURERS.items()]
    rows += [(f"HC//{k}", v, ["HC//SPECIFIC_CHECKUP"]) for k, v in CHECKUP_ITEMS.items()]
    for code, desc in DIAGNOSES.items():
        parent = [f"ICD10/{code.split('.')[0]}"]
        rows.append((f"DX//ICD10//{code}", desc, parent))
        rows.append((f"DX_SUSPECTED//ICD10//{code}", f"suspected {desc} (疑い)", [f"DX//ICD10//{code}"]))
    rows += [(f"DRUG//ATC//{c}", d, [f"ATC/{c[:5]}"]) for c, d in DRUGS.items()]
    rows += [(f"PROC//JP//{c}", d, []) for c, d in PROCS.items()]
    return rows


@dataclass(frozen=True)
class Catalogue:
    """All codes, in a fixed order; ``ids[code]`` is a code's integer id."""

    codes: tuple[str, ...]
    descriptions: tuple[str, ...]
    parents: tuple[tuple[str, ...], ...]
    ids: dict[str, int] = field(repr=False)

    def id(self, code: str) -> int:
        """The integer id of ``code`` (KeyError if the world cannot emit it)."""
        return self.ids[code]


# The complexity family's tasks and the outcome code each plants (synth/complexity.py draws them).
COMPLEXITY_TASKS = tuple(f"complexity_k{k}" for k in range(4))
OUTCOME_CODES = {t: f"DX//SYNTH//{t.upper()}" for t in COMPLEXITY_TASKS}


def catalogue(complexity: bool = False) -> Catalogue:
    """Build the catalogue (cheap; the order never changes, so ids are stable). With
    ``complexity``, the complexity family's outcome codes come last (ids of the others unchanged)."""
    rows = _catalogue()
    if complexity:
        rows += [(code, f"synthetic disease of the complexity family, {t} (planted risk; see "
                  "docs/synthetic.md)", []) for t, code in OUTCOME_CODES.items()]
    codes = tuple(r[0] for r in rows)
    assert len(set(codes)) == len(codes), "duplicate code in the catalogue"
    return Catalogue(codes, tuple(r[1] for r in rows), tuple(tuple(r[2]) for r in rows),
                     {c: i for i, c in enumerate(codes)})


def is_antihypertensive(code: str) -> bool:
    """True for drug codes the antihypertensive_start task counts."""
    return code.startswith("DRUG//ATC//") and code[11:14] in ANTIHYPERTENSIVE_PREFIXES
